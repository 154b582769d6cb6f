"""Writing a version directory: staged in a hidden temp dir, published by one rename, never overwritten
(in an object store: staged locally, uploaded, committed by one conditional write of its manifest:
runtime.engine.remote). Builds racing for one number: one wins; the other is told "version N exists"
(a --version it was given) or takes the next free number (renumbering its manifest).
(Its manifest is written by runtime.engine.manifest, the one writer of that contract.)"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from runtime.engine.cuda_device import tensorrt_version, visible_device
from runtime.engine.errors import VersionExists
from runtime.engine.manifest import MANIFEST, Manifest, encode_manifest, read_manifest
from runtime.engine.remote import ATTEMPTS, RemoteRepository, RepositoryError, is_remote, local_path
from runtime.engine.repository import list_versions


def next_version(model_dir: Path, requested: int | None) -> int:
    if requested is None:
        versions = list_versions(model_dir)
        return versions[-1] + 1 if versions else 1
    if requested < 1:
        raise VersionExists(f"--version must be a positive integer, got {requested}")
    if (model_dir / str(requested)).exists():
        raise VersionExists(
            f"{model_dir / str(requested)} already exists; versions are never overwritten "
            "(omit --version to take the next one)"
        )
    return requested


@contextlib.contextmanager
def staging_dir(model_dir: Path, version: int) -> Iterator[Path]:
    """A hidden directory beside the final one (same filesystem, so publishing is one rename); removed
    on any failure, so a failed build leaves nothing behind."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, model_dir: Path, version: int, take_next: bool = False) -> Path:
    """Publish a staged version by one rename, as `version`: if another build took that number meanwhile,
    VersionExists, or with `take_next` the next free number (the staged manifest renumbered)."""
    _readable(staging)
    for _ in range(ATTEMPTS):
        final = model_dir / str(version)
        # exists() first: rename() would replace an empty directory; it refuses a non-empty one (the
        # race: another build's rename landing between the two), which is the same answer.
        if not final.exists():
            try:
                os.rename(staging, final)
                return final
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise RepositoryError(f"{model_dir}: cannot publish version {version}: {e.strerror}") from None
        if not take_next:
            raise VersionExists(
                f"{model_dir}: version {version} exists: another build published it meanwhile; versions are "
                "never overwritten, nothing was written (omit --version to take the next number)"
            )
        version = max(version + 1, next_version(model_dir, None))
        renumber(staging, version)
    raise VersionExists(
        f"{model_dir}: {ATTEMPTS} version numbers in a row were taken by other builds meanwhile; nothing was "
        "written, try again"
    )


def renumber(staging: Path, version: int) -> None:
    """A staged version's manifest, made to say `version` (no file it lists changes)."""
    manifest = read_manifest(staging).model_copy(update={"version": version})
    (staging / MANIFEST).write_bytes(encode_manifest(manifest))


class LocalDestination:
    """A model's folder in a local repository: staged beside the final directory, published by a rename."""

    def __init__(self, repository: str | os.PathLike, name: str) -> None:
        self.model_dir = local_path(repository) / name

    def next_version(self, requested: int | None) -> int:
        return next_version(self.model_dir, requested)

    def latest(self) -> tuple[str, Manifest] | None:
        versions = list_versions(self.model_dir)
        if not versions:
            return None
        latest = self.model_dir / str(versions[-1])
        return str(latest), read_manifest(latest)

    def staging(self, version: int):
        return staging_dir(self.model_dir, version)

    def publish(self, staging: Path, version: int, take_next: bool = False) -> tuple[str, Manifest]:
        final = publish(staging, self.model_dir, version, take_next)
        return str(final), read_manifest(final)


class RemoteDestination:
    """A model's folder in an object store: staged in a local temporary directory, then uploaded and
    committed by its manifest (runtime.engine.remote.RemoteRepository.publish)."""

    def __init__(self, repository: str, name: str) -> None:
        self.repository, self.name = RemoteRepository(repository), name

    def next_version(self, requested: int | None) -> int:
        return self.repository.next_version(self.name, requested)

    def latest(self) -> tuple[str, Manifest] | None:
        versions = self.repository.versions(self.name)
        if not versions:
            return None
        manifest = self.repository.manifest(self.name, versions[-1])
        return self.repository.version_uri(self.name, versions[-1]), manifest

    @contextlib.contextmanager
    def staging(self, version: int) -> Iterator[Path]:
        root = Path(tempfile.mkdtemp(prefix=f"trtserve-build-{self.name}-{version}-"))
        try:
            yield root
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def publish(self, staging: Path, version: int, take_next: bool = False) -> tuple[str, Manifest]:
        _readable(staging)
        return self.repository.publish(staging, self.name, version, take_next)


def destination(repository: str | os.PathLike, name: str) -> LocalDestination | RemoteDestination:
    """Where `convert build` publishes `name`; an unsupported URI scheme is refused (RepositoryError)."""
    if is_remote(repository):
        return RemoteDestination(str(repository), name)
    return LocalDestination(repository, name)


def _readable(root: Path) -> None:
    """Staging dirs (mkdtemp) and some writers (onnx external data) are private to the owner; a
    published version should be readable like any other file the user creates."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def toolchain() -> dict:
    def version(module: str) -> str | None:
        try:
            return __import__(module).__version__
        except ImportError:
            return None

    import torch

    device, _ = visible_device()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": version("onnx"),
        "onnxruntime": version("onnxruntime"),
        "tensorrt": tensorrt_version(),
        "cuda": torch.version.cuda,
        "gpu": device.name if device else None,
        "driver": device.driver_version if device else None,
    }


def git_commit(path: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository holding `path`, or (None, None) outside one."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(path), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty
