"""Model repository layout: <repository>/<name>/<version>/, versions being positive integers.

A repository is a local directory (or a file:// URI) or an object-store URI (s3://, gs://:
runtime.engine.remote). Any other URI scheme is refused, never taken as a path. `version_dir` always
answers a local, verified-on-load directory: for a remote repository, its cached download."""

from __future__ import annotations

import os
from pathlib import Path

from runtime.engine.remote import RemoteRepository, choose_version, is_remote, local_path, parse_version_uri


def list_versions(model_dir: Path) -> list[int]:
    """Complete versions of one model, ascending; staging and hidden directories are ignored."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def repository_location(repository: str | os.PathLike) -> str | Path:
    """A repository as given: an object-store URI unchanged, a local one as an absolute path."""
    if is_remote(repository):
        return str(repository)
    return local_path(repository).expanduser().resolve()


def resolve_version(repository: str | os.PathLike, name: str, version: int | str = "latest") -> int:
    """The version number `version` names (ArtifactError when there is none), without downloading it."""
    if is_remote(repository):
        return RemoteRepository(str(repository)).resolve(name, version)
    return int(_local_version_dir(local_path(repository), name, version).name)


def version_dir(repository: str | os.PathLike, name: str, version: int | str = "latest") -> Path:
    """The local directory of a version; from a remote repository, its verified cached download."""
    if is_remote(repository):
        return RemoteRepository(str(repository)).fetch(name, version)
    return _local_version_dir(local_path(repository), name, version)


def _local_version_dir(repository: Path, name: str, version: int | str) -> Path:
    model_dir = Path(repository) / name
    return model_dir / str(choose_version(list_versions(model_dir), version, str(model_dir), name))


def local_version(location: str | os.PathLike) -> Path:
    """A version directory named by a path, or by an object-store URI `.../MODEL/VERSION`: a local
    directory (the verified cached download of a remote one)."""
    if is_remote(location):
        uri = parse_version_uri(str(location))
        return RemoteRepository(uri.repository).fetch(uri.name, uri.version)
    return local_path(location)
