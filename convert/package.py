"""Writing a version directory: staged in a hidden temp dir, published by one rename, never overwritten.
(Its manifest is written by runtime.engine.manifest.write_manifest, the one writer of that contract.)"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from convert.errors import TrtserveError
from runtime.engine.cuda_device import tensorrt_version, visible_device
from runtime.engine.repository import list_versions


class VersionExists(TrtserveError):
    exit_code = 2


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


def publish(staging: Path, model_dir: Path, version: int) -> Path:
    final = model_dir / str(version)
    if final.exists():  # another build took this number while we worked
        raise VersionExists(f"{final} appeared while building; versions are never overwritten, nothing was written")
    _readable(staging)
    os.rename(staging, final)
    return final


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
