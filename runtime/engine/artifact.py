"""Model version directories: the checks made before anything in one is loaded.

A version directory is trusted only after every file listed in its manifest matches its recorded size
and sha256, and no path in it (ONNX external-data locations included) leads outside the directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from runtime.engine.errors import ArtifactError, single_line
from runtime.engine.manifest import Manifest, read_manifest, sha256_file


def resolve_inside(root: Path, rel: str, what: str) -> Path:
    """The path `rel` names under `root`, refusing any that leaves it (.., absolute, symlinks)."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel or not rel:
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


def verify_version_dir(version_dir: str | Path) -> Manifest:
    """The manifest of `version_dir`, after checking every file it lists; raise ArtifactError."""
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    files = manifest.files
    for rel, record in files.items():
        path = resolve_inside(version_dir, rel, "file")
        if not path.is_file():
            raise ArtifactError(f"{version_dir}: {rel} is listed in the manifest but missing")
        size = path.stat().st_size
        if size != record.bytes:
            raise ArtifactError(
                f"{version_dir}: {rel} is {size} bytes, the manifest says {record.bytes}; "
                "the file was changed or truncated"
            )
        if sha256_file(path) != record.sha256:
            raise ArtifactError(f"{version_dir}: checksum mismatch for {rel}; the file was changed after packaging")
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
    for engine in manifest.engines:
        if engine.file not in files:
            raise ArtifactError(f"{version_dir}: engine {engine.file!r} is not listed in the manifest's files")
    return manifest
