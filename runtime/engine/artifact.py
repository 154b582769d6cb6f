"""Model version directories: the checks made before anything in one is loaded.

A version directory is trusted only after every file listed in its manifest matches its recorded size
and sha256, and no path in it (ONNX external-data locations included) leads outside the directory. Every
file the manifest names elsewhere (engines, preprocessing files, the eval set, the reference statistics)
must be one of those listed files. A reader of one such file that cannot count on the whole directory
having been verified reads it with `read_verified`, which checks those bytes themselves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from runtime.engine.errors import ArtifactError, single_line
from runtime.engine.manifest import FileRecord, Manifest, read_manifest, sha256_file


def resolve_inside(root: Path, rel: str, what: str) -> Path:
    """The path `rel` names under `root`, refusing any that leaves it (.., absolute, symlinks)."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel or "\0" in rel or not rel:
        raise ArtifactError(f"{root}: {what} {rel!r} leads outside the version directory; refusing to load")
    path = root / pure
    real_root = root.resolve()
    if not path.resolve().is_relative_to(real_root):
        raise ArtifactError(f"{root}: {what} {rel!r} resolves outside the version directory; refusing to load")
    return path


def _tensors(graph) -> Iterator:
    """Every TensorProto of an ONNX graph, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def onnx_external_data_locations(onnx_path: Path) -> list[str]:
    """The files an ONNX model's external data lives in, as written in the model (not resolved)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError, or whatever a damaged file makes the parser raise
        reason = single_line(str(e)) or type(e).__name__
        raise ArtifactError(f"{onnx_path}: not a readable ONNX model ({reason})") from None
    locations = []
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            location = entry.get("location", "")
            if location not in locations:
                locations.append(location)
    return locations


def named_files(manifest: Manifest) -> Iterator[tuple[str, str]]:
    """(key, path) of every file the manifest names outside `files`, the key as a reader of it sees it."""
    for i, engine in enumerate(manifest.engines):
        yield f"engines[{i}].file", engine.file
    for kind, packaged in (manifest.preprocessing or {}).items():
        for j, rel in enumerate(packaged.files):
            yield f"preprocessing.{kind}.files[{j}]", rel
    if manifest.evaluation is not None:
        yield "evaluation.file", manifest.evaluation.file
    if manifest.reference is not None:
        yield "reference.file", manifest.reference.file


def _listed(version_dir: Path, manifest: Manifest, key: str, rel: str) -> tuple[Path, FileRecord]:
    """The confined path of a file the manifest names under `key`, and its record in `files`."""
    path = resolve_inside(version_dir, rel, key)
    record = manifest.files.get(rel)
    if record is None:
        raise ArtifactError(
            f"{version_dir}: {key} {rel!r} is not listed in the manifest's files; refusing to load unverified data"
        )
    return path, record


def _check(version_dir: Path, rel: str, record: FileRecord, size: int, digest: Callable[[], str]) -> None:
    """`rel` against its record: the size first, the sha256 (computed only then) second."""
    if size != record.bytes:
        raise ArtifactError(
            f"{version_dir}: {rel} is {size} bytes, the manifest says {record.bytes}; the file was changed or truncated"
        )
    if digest() != record.sha256:
        raise ArtifactError(f"{version_dir}: checksum mismatch for {rel}; the file was changed after packaging")


def read_verified(version_dir: str | Path, manifest: Manifest, rel: str, key: str) -> bytes:
    """The bytes of a file `manifest` names under `key` (e.g. "reference.file"), confined to the version
    directory and checked against its record in `files` as read: what is parsed is what was verified."""
    version_dir = Path(version_dir)
    path, record = _listed(version_dir, manifest, key, rel)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(record.bytes) if size == record.bytes else b""  # never more than the manifest says
    except OSError as e:
        raise ArtifactError(f"{version_dir}: {key} {rel!r} cannot be read ({e.strerror or e})") from None
    _check(version_dir, rel, record, size, lambda: hashlib.sha256(data).hexdigest())
    return data


def verify_version_dir(version_dir: str | Path) -> Manifest:
    """The manifest of `version_dir`, after checking every file it lists or names; raise ArtifactError."""
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    files = manifest.files
    for rel in files:  # every path first: refusing a manifest needs no file hashed
        resolve_inside(version_dir, rel, "file")
    for key, rel in named_files(manifest):
        _listed(version_dir, manifest, key, rel)
    evaluation = manifest.evaluation
    if evaluation is not None and files[evaluation.file].sha256 != evaluation.data_sha256:
        raise ArtifactError(
            f"{version_dir}: evaluation.data_sha256 is not the checksum files lists for {evaluation.file!r}"
        )
    for rel, record in files.items():
        path = version_dir / rel
        if not path.is_file():
            raise ArtifactError(f"{version_dir}: {rel} is listed in the manifest but missing")
        _check(version_dir, rel, record, path.stat().st_size, lambda p=path: sha256_file(p))
    for rel in files:
        if rel.endswith(".onnx"):
            base = PurePosixPath(rel).parent
            for location in onnx_external_data_locations(version_dir / rel):
                target = str(base / location) if str(base) != "." else location
                resolve_inside(version_dir, target, f"external-data location of {rel}")
                if str(PurePosixPath(target)) not in files:
                    raise ArtifactError(
                        f"{version_dir}: {rel} keeps weights in {location!r}, which the manifest does not "
                        "list; refusing to load unverified data"
                    )
    return manifest
