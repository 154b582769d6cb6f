"""Model repositories in object stores (`s3://bucket/prefix`, `gs://bucket/prefix`) through pyarrow.fs.

Layout: <prefix>/<name>/<version>/manifest.json; a version exists once its manifest does. A publisher
uploads the version's files under a folder of its own, <prefix>/<name>/.uploads/<random id>/ (never
taken for a version: versions are numbered folders), then commits the version with ONE write of its
manifest, which names that folder (`files_under`) and succeeds only where no manifest is (S3:
`If-None-Match: *`). So of publishers racing for one number exactly one wins; a reader sees the
winner's manifest and the winner's files, never a mix; a loser removes its own folder and nothing else.
A manifest without `files_under` (written by an older trtserve) has its files beside it, and reads as
before. gs:// cannot send its precondition (`ifGenerationMatch=0`) through pyarrow: there the commit
looks, then writes, so racing publishers may both be told they won (the later manifest stands, with its
own files: still never a mix).

Readers never load from the store: `fetch` downloads a version into a local cache
(`$TRTSERVE_CACHE`, else `~/.cache/trtserve`), under a temporary name, verifies every sha256 its
manifest lists, and renames it into place; a cached version is re-verified, and its manifest compared
with the store's, before each reuse. Credentials, region and endpoint come from the standard AWS
configuration (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` for S3-compatible stores) or the URI
(`s3://KEY:SECRET@bucket/prefix?endpoint_override=...&scheme=http&region=...`). Only pyarrow and boto3
see that URI whole: every message names the repository by its scrubbed form (runtime.engine.credentials).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, unquote, urlsplit

from runtime.engine.artifact import resolve_inside, verify_version_dir
from runtime.engine.credentials import scrub
from runtime.engine.errors import ArtifactError, TrtserveError, VersionExists
from runtime.engine.manifest import MANIFEST, UPLOADS, Manifest, encode_manifest, read_manifest

log = logging.getLogger("trtserve.repository")

SCHEMES = {"s3": "s3", "gs": "gs", "gcs": "gs"}  # what pyarrow.fs reads; the value names the cache folder
URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
CHUNK = 8 << 20
TRANSFER_THREADS = 8
ATTEMPTS = 10  # version numbers a publish that may take the next one tries before giving up
CONFLICT_RETRIES = 3  # S3's 409 ConditionalRequestConflict: another conditional write in flight; retry


class RepositoryError(TrtserveError):
    """A repository location that cannot be used: an unsupported scheme, a store that cannot be reached."""

    exit_code = 2


def scheme_of(location: str | os.PathLike) -> str | None:
    """The URI scheme of `location` (lower case), or None for a plain path."""
    match = URI.match(str(location))
    return match["scheme"].lower() if match else None


def is_remote(location: str | os.PathLike) -> bool:
    """Whether `location` is an object-store URI; an unsupported scheme is refused, never taken as a path."""
    scheme = scheme_of(location)
    if scheme is None or scheme == "file":
        return False
    if scheme not in SCHEMES:
        raise RepositoryError(
            f"{location}: the {scheme}:// scheme is not supported; use a local path, file://, s3:// or gs://"
        )
    return True


def local_path(location: str | os.PathLike) -> Path:
    """A local repository location as a path (file:// URIs included)."""
    text = str(location)
    if scheme_of(text) == "file":
        return Path(urlsplit(text).path)
    return Path(text)


def choose_version(versions: list[int], version: int | str, where: str, name: str) -> int:
    """The number `version` ("latest" or an integer) names among a model's complete `versions`
    (ascending), or ArtifactError saying what there is; local and remote repositories alike."""
    if not versions:
        raise ArtifactError(f"{where}: no versions of model {name!r}")
    if version == "latest":
        return versions[-1]
    if int(version) not in versions:
        raise ArtifactError(f"{where}: no version {version} of model {name!r}; have {', '.join(map(str, versions))}")
    return int(version)


def cache_root() -> Path:
    return Path(os.environ.get("TRTSERVE_CACHE") or Path.home() / ".cache" / "trtserve").expanduser()


@dataclass(frozen=True)
class VersionURI:
    """`<repository URI>/<name>/<version>`, as `convert check` and `convert inspect` take it."""

    repository: str
    name: str
    version: int


def parse_version_uri(uri: str) -> VersionURI:
    parts = urlsplit(uri)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2 or not segments[-1].isdigit() or int(segments[-1]) < 1:
        raise RepositoryError(f"{uri}: expected {parts.scheme}://BUCKET/PREFIX/MODEL/VERSION (a positive integer)")
    prefix = "/".join([parts.netloc, *segments[:-2]])
    query = f"?{parts.query}" if parts.query else ""
    return VersionURI(f"{parts.scheme}://{prefix}{query}", segments[-2], int(segments[-1]))


class _Taken(Exception):
    """The object a conditional write would create is there already."""


class _Unsure(RepositoryError):
    """A commit whose outcome could not be read back: its upload is kept, since a manifest may name it."""


class RemoteRepository:
    def __init__(self, uri: str) -> None:
        import pyarrow.fs

        is_remote(uri)  # refuses an unsupported scheme
        self.uri = uri  # with any credentials it carries: for pyarrow and boto3 only
        self.display = scrub(uri)  # what every message, log line and answer shows
        try:
            self.fs, root = pyarrow.fs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as e:
            raise RepositoryError(f"{self.display}: cannot open the repository: {e}") from None
        self.root = root.rstrip("/")
        self.scheme = SCHEMES[scheme_of(uri)]

    @classmethod
    def on(cls, fs, root: str, scheme: str = "s3") -> RemoteRepository:
        """A repository on an already-open pyarrow filesystem (tests: a LocalFileSystem standing in)."""
        repo = cls.__new__(cls)
        repo.uri, repo.fs, repo.root, repo.scheme = f"{scheme}://{root}", fs, root.rstrip("/"), scheme
        repo.display = repo.uri
        return repo

    def _path(self, *parts: str | int) -> str:
        return "/".join([self.root, *map(str, parts)])

    def _where(self) -> str:
        """The repository as messages name it: scrubbed, without its query."""
        return self.display.split("?")[0].rstrip("/")

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            raise RepositoryError(f"{self.display}: {what} failed: {e}") from None

    # -- reading ------------------------------------------------------------------------------------
    def _numbered(self, name: str) -> list[int]:
        """Every numbered folder of `name`, complete or not."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self._path(name), allow_not_found=True, recursive=False)
        infos = self._call(f"listing {name}", self.fs.get_file_info, selector)
        numbers = (PurePosixPath(i.path).name for i in infos if i.type == pyarrow.fs.FileType.Directory)
        return sorted(int(n) for n in numbers if n.isdigit() and int(n) > 0)

    def versions(self, name: str) -> list[int]:
        """Complete versions (those with a manifest), ascending."""
        import pyarrow.fs

        numbered = self._numbered(name)
        paths = [self._path(name, v, MANIFEST) for v in numbered]
        infos = self._call(f"listing {name}", self.fs.get_file_info, paths) if paths else []
        return [v for v, i in zip(numbered, infos, strict=True) if i.type == pyarrow.fs.FileType.File]

    def resolve(self, name: str, version: int | str = "latest") -> int:
        return choose_version(self.versions(name), version, f"{self._where()}/{name}", name)

    def manifest(self, name: str, version: int) -> Manifest:
        """The manifest of a version, read from the store (its shape checked; its files not)."""
        with tempfile.TemporaryDirectory(prefix="trtserve-manifest-") as tmp:
            (Path(tmp) / MANIFEST).write_bytes(self._read_bytes(self._path(name, version, MANIFEST)))
            return read_manifest(tmp)

    def version_uri(self, name: str, version: int) -> str:
        return f"{self._where()}/{name}/{version}"

    def _read_bytes(self, path: str) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(path) as f:
                return f.read()

        return self._call(f"reading {path}", read)

    def _download(self, path: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)

        def copy() -> None:
            with self.fs.open_input_stream(path) as source, open(target, "wb") as sink:
                while block := source.read(CHUNK):
                    sink.write(block)

        self._call(f"downloading {path}", copy)

    def cache_dir(self, name: str, version: int) -> Path:
        parts = [p for p in PurePosixPath(self.root).parts if p not in ("/", "..", ".")]
        return cache_root().joinpath(self.scheme, *parts, name, str(version))

    def fetch(self, name: str, version: int | str = "latest") -> Path:
        """A verified local copy of a version (downloaded once, re-verified each time it is reused)."""
        number = self.resolve(name, version)
        remote_manifest = self._read_bytes(self._path(name, number, MANIFEST))
        final = self.cache_dir(name, number)
        if final.is_dir():
            try:
                if (final / MANIFEST).read_bytes() != remote_manifest:
                    raise ArtifactError(f"{final}: its manifest is not the store's")
                verify_version_dir(final)
                return final
            except (ArtifactError, OSError) as e:
                log.warning("cached copy %s cannot be reused (%s); downloading it again", final, e)
                shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".fetch-{number}-", dir=final.parent))
        try:
            (staging / MANIFEST).write_bytes(remote_manifest)
            manifest = read_manifest(staging)
            source = self._path(name, manifest.files_under or number)  # the committed upload, or beside it
            targets = [(rel, resolve_inside(staging, rel, "file")) for rel in manifest.files]
            with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
                for done in [pool.submit(self._download, f"{source}/{rel}", t) for rel, t in targets]:
                    done.result()
            try:
                verify_version_dir(staging)
            except ArtifactError as e:
                raise ArtifactError(
                    f"{self.version_uri(name, number)}: the download does not match its manifest, refusing it: {e}"
                ) from None
            try:
                os.rename(staging, final)
            except OSError:  # another process put it there first: use theirs, once verified
                verify_version_dir(final)
            return final
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- writing ------------------------------------------------------------------------------------
    def next_version(self, name: str, requested: int | None) -> int:
        """The number a new version takes: after every numbered folder, complete or not (a half-uploaded
        version of an older trtserve keeps its number), or `requested` if nothing is there."""
        numbered = self._numbered(name)
        if requested is None:
            return numbered[-1] + 1 if numbered else 1
        if requested < 1:
            raise VersionExists(f"--version must be a positive integer, got {requested}")
        if requested in numbered:
            raise VersionExists(
                f"{self.version_uri(name, requested)} already exists; versions are never overwritten "
                "(omit --version to take the next one)"
            )
        return requested

    def publish(self, staging: Path, name: str, version: int, take_next: bool = False) -> tuple[str, Manifest]:
        """Upload a built version directory (the files its manifest lists) under a folder of this
        publisher's own, then commit it as `version` by one conditional write of its manifest; the URI
        and the manifest committed. A version there already is never overwritten: VersionExists, or with
        `take_next` the next free number. What this publisher uploaded is removed unless it committed."""
        if not take_next and version in self._numbered(name):
            raise VersionExists(f"{self.version_uri(name, version)} already exists; versions are never overwritten")
        manifest = read_manifest(staging)
        upload = f"{UPLOADS}/{uuid.uuid4().hex}"
        committed = unsure = False
        try:
            self._upload(staging, manifest, self._path(name, upload))
            for _ in range(ATTEMPTS):
                final = manifest.model_copy(update={"version": version, "files_under": upload})
                if self._commit(self._path(name, version, MANIFEST), encode_manifest(final)):
                    committed = True
                    return self.version_uri(name, version), final
                if not take_next:
                    raise VersionExists(
                        f"{self._where()}/{name}: version {version} exists: another publisher committed it "
                        "meanwhile; versions are never overwritten, nothing of this build was left there "
                        "(omit --version to take the next number)"
                    )
                log.info("%s/%s: version %d was taken meanwhile; trying the next number", self._where(), name, version)
                version = max(version + 1, self.next_version(name, None))
            raise VersionExists(
                f"{self._where()}/{name}: {ATTEMPTS} version numbers in a row were taken by other publishers "
                "meanwhile; nothing was written, try again"
            )
        except _Unsure:
            unsure = True
            log.warning("%s: keeping this publish's upload %s/%s", self.display, name, upload)
            raise
        finally:
            if not committed and not unsure:
                self._remove(self._path(name, upload))

    def _upload(self, staging: Path, manifest: Manifest, target: str) -> None:
        sources = [(resolve_inside(staging, rel, "file"), f"{target}/{rel}") for rel in manifest.files]
        # Object stores need no folders; file-like ones (gs with hierarchical buckets, local) do.
        for folder in sorted({str(PurePosixPath(path).parent) for _, path in sources}):
            self._call(f"creating {folder}", lambda f=folder: self.fs.create_dir(f, recursive=True))
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            for done in [pool.submit(self._upload_file, source, path) for source, path in sources]:
                done.result()

    def _upload_file(self, source: Path, path: str) -> None:
        def copy() -> None:
            with open(source, "rb") as f, self.fs.open_output_stream(path) as sink:
                while block := f.read(CHUNK):
                    sink.write(block)

        self._call(f"uploading {path}", copy)

    def _commit(self, path: str, data: bytes) -> bool:
        """Write `data` at `path` if nothing is there; whether `data` is what is there now. A refused or
        failed write is read back: one that landed though its answer was lost (or that the client
        retried into a 412) is this publisher's, and its files must stay."""
        try:
            self._put_if_absent(path, data)
            return True
        except _Taken:
            failure = None
        except RepositoryError as e:
            failure = e
        try:
            current = self._read_bytes(path) if self._exists(path) else None
        except RepositoryError as e:
            raise _Unsure(f"{e}; whether {path} was committed is unknown") from None
        if current is None and failure is not None:
            raise failure
        return current == data

    def _put_if_absent(self, path: str, data: bytes) -> None:
        """Create `path` holding `data`, or raise _Taken if it exists: atomically, where the store can."""
        kind = self.fs.type_name
        if kind == "s3":
            self._s3_put_if_absent(path, data)
        elif kind == "local":
            self._call(f"writing {path}", _link_if_absent, path, data)
        else:  # gs: no precondition through pyarrow; look, then write (the module's note)
            if self._exists(path):
                raise _Taken
            parent = str(PurePosixPath(path).parent)
            self._call(f"creating {parent}", lambda: self.fs.create_dir(parent, recursive=True))
            self._call(f"writing {path}", self._write, path, data)

    def _write(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as sink:
            sink.write(data)

    def _s3_put_if_absent(self, path: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._s3_client()
        bucket, _, key = path.partition("/")
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                if code == "PreconditionFailed":
                    raise _Taken from None
                if code != "ConditionalRequestConflict" or attempt == CONFLICT_RETRIES:
                    raise RepositoryError(f"{self.display}: committing {path} failed: {e}") from None
            except BotoCoreError as e:
                raise RepositoryError(f"{self.display}: committing {path} failed: {e}") from None
            time.sleep(0.1 * (attempt + 1))

    def _s3_client(self):
        """A boto3 client for the store pyarrow reaches: the URI's credentials, endpoint and region, else
        the standard AWS configuration (as pyarrow takes it)."""
        try:
            import boto3
        except ImportError:
            raise RepositoryError(
                f"{self.display}: publishing to S3 needs boto3 (pip install 'trtserve[convert]')"
            ) from None
        parts = urlsplit(self.uri)
        query = dict(parse_qsl(parts.query))
        options: dict = {}
        if parts.username:
            options["aws_access_key_id"] = unquote(parts.username)
            options["aws_secret_access_key"] = unquote(parts.password or "")
        endpoint = query.get("endpoint_override")
        if endpoint:
            options["endpoint_url"] = endpoint if "://" in endpoint else f"{query.get('scheme', 'https')}://{endpoint}"
        region = query.get("region") or getattr(self.fs, "region", None)
        if region:
            options["region_name"] = region
        if "tls_ca_file_path" in query:
            options["verify"] = query["tls_ca_file_path"]
        if query.get("tls_verify_certificates", "").lower() in ("0", "false"):
            options["verify"] = False
        return boto3.client("s3", **options)

    def _remove(self, folder: str) -> None:
        """This publisher's own upload folder, and nothing else; a failure is told, not raised."""
        try:
            if self._exists(folder):
                self.fs.delete_dir(folder)
        except (OSError, RepositoryError) as e:
            log.warning("could not remove this publish's upload %s: %s", folder, scrub(str(e)))

    def _exists(self, path: str) -> bool:
        import pyarrow.fs

        return self._call(f"looking up {path}", self.fs.get_file_info, path).type != pyarrow.fs.FileType.NotFound


def _link_if_absent(path: str, data: bytes) -> None:
    """On a local filesystem: the file appears whole or not at all, and only if none is there."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.link(tmp, target)
    except FileExistsError:
        raise _Taken from None
    finally:
        os.unlink(tmp)


__all__ = [
    "RemoteRepository",
    "RepositoryError",
    "VersionURI",
    "cache_root",
    "is_remote",
    "local_path",
    "parse_version_uri",
    "scheme_of",
]
