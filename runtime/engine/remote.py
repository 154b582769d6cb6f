"""Model repositories in object stores (`s3://bucket/prefix`, `gs://bucket/prefix`) through pyarrow.fs.

Layout as on disk: <prefix>/<name>/<version>/, and a version exists once its `manifest.json` does: it is
uploaded last, after every other file (`publish`), so a reader sees a version complete or not at all.
Readers never load from the store: `fetch` downloads a version into a local cache
(`$TRTSERVE_CACHE`, else `~/.cache/trtserve`), under a temporary name, verifies every sha256 its
manifest lists, and renames it into place; a cached version is re-verified, and its manifest compared
with the store's, before each reuse. Credentials, region and endpoint come from the standard AWS
configuration (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` for S3-compatible stores) or pyarrow's URI
options (`?endpoint_override=...&scheme=http&region=...`)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from runtime.engine.artifact import resolve_inside, verify_version_dir
from runtime.engine.errors import ArtifactError, TrtserveError, VersionExists
from runtime.engine.manifest import MANIFEST, read_manifest

log = logging.getLogger("trtserve.repository")

SCHEMES = {"s3": "s3", "gs": "gs", "gcs": "gs"}  # what pyarrow.fs reads; the value names the cache folder
URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
CHUNK = 8 << 20
TRANSFER_THREADS = 8


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


class RemoteRepository:
    def __init__(self, uri: str) -> None:
        import pyarrow.fs

        is_remote(uri)  # refuses an unsupported scheme
        self.uri = uri
        try:
            self.fs, root = pyarrow.fs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as e:
            raise RepositoryError(f"{uri}: cannot open the repository: {e}") from None
        self.root = root.rstrip("/")
        self.scheme = SCHEMES[scheme_of(uri)]

    @classmethod
    def on(cls, fs, root: str, scheme: str = "s3") -> RemoteRepository:
        """A repository on an already-open pyarrow filesystem (tests: a LocalFileSystem standing in)."""
        repo = cls.__new__(cls)
        repo.uri, repo.fs, repo.root, repo.scheme = f"{scheme}://{root}", fs, root.rstrip("/"), scheme
        return repo

    def _path(self, *parts: str | int) -> str:
        return "/".join([self.root, *map(str, parts)])

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            raise RepositoryError(f"{self.uri}: {what} failed: {e}") from None

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
        return choose_version(self.versions(name), version, f"{self.uri.split('?')[0]}/{name}", name)

    def manifest(self, name: str, version: int):
        """The manifest of a version, read from the store (its shape checked; its files not)."""
        with tempfile.TemporaryDirectory(prefix="trtserve-manifest-") as tmp:
            (Path(tmp) / MANIFEST).write_bytes(self._read_bytes(self._path(name, version, MANIFEST)))
            return read_manifest(tmp)

    def version_uri(self, name: str, version: int) -> str:
        return f"{self.uri.split('?')[0].rstrip('/')}/{name}/{version}"

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
            targets = [(rel, resolve_inside(staging, rel, "file")) for rel in manifest.files]
            with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
                for done in [pool.submit(self._download, self._path(name, number, rel), t) for rel, t in targets]:
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
        version keeps its number), or `requested` if nothing is there."""
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

    def publish(self, staging: Path, name: str, version: int) -> str:
        """Upload a built version directory: every file, then `manifest.json` last, as the commit marker.
        A version already there (even partly) is never overwritten; a failed upload is removed."""
        if version in self._numbered(name):
            raise VersionExists(f"{self.version_uri(name, version)} already exists; versions are never overwritten")
        files = sorted(p for p in staging.rglob("*") if p.is_file() and p != staging / MANIFEST)
        target = self._path(name, version)
        try:
            # Object stores need no folders; file-like ones (gs with hierarchical buckets, local) do.
            folders = {"/".join([target, *p.parent.relative_to(staging).parts]) for p in files}
            for folder in sorted(folders):
                self._call(f"creating {folder}", lambda f=folder: self.fs.create_dir(f, recursive=True))
            with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
                uploads = [pool.submit(self._upload, p, f"{target}/{p.relative_to(staging).as_posix()}") for p in files]
                for done in uploads:
                    done.result()
            if self._exists(f"{target}/{MANIFEST}"):
                raise VersionExists(f"{self.version_uri(name, version)} was published by someone else meanwhile")
            self._upload(staging / MANIFEST, f"{target}/{MANIFEST}")
        except BaseException:
            if self._exists(target) and not self._exists(f"{target}/{MANIFEST}"):
                try:
                    self.fs.delete_dir(target)
                except OSError as e:
                    log.warning("could not remove the incomplete upload %s: %s", target, e)
            raise
        return self.version_uri(name, version)

    def _exists(self, path: str) -> bool:
        import pyarrow.fs

        return self._call(f"looking up {path}", self.fs.get_file_info, path).type != pyarrow.fs.FileType.NotFound

    def _upload(self, source: Path, path: str) -> None:
        def copy() -> None:
            with open(source, "rb") as f, self.fs.open_output_stream(path) as sink:
                while block := f.read(CHUNK):
                    sink.write(block)

        self._call(f"uploading {path}", copy)


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
