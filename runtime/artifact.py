"""Model version directories: the manifest's shape and the checks made before anything is loaded.

A version directory is trusted only after every file listed in its manifest matches its recorded size
and sha256, and no path in it (ONNX external-data locations included) leads outside the directory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from runtime.errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARITY = "parity.json"
PARITY_SAMPLES = "parity/samples.npz"  # parity inputs and PyTorch reference outputs

MANIFEST_KEYS = (
    "format_version",
    "name",
    "version",
    "created_at",
    "source",
    "inputs",
    "outputs",
    "dims",
    "files",
    "toolchain",
    "onnx",
    "engines",
    "parity",
    "preprocessing",
    "serving",
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


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

    model = onnx.load(str(onnx_path), load_external_data=False)
    locations = []
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            location = entry.get("location", "")
            if location not in locations:
                locations.append(location)
    return locations


def read_manifest(version_dir: Path) -> dict:
    path = version_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{version_dir}: no {MANIFEST}; not a model version directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ArtifactError(f"{path}: missing key {missing[0]!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {manifest['format_version']!r} is not supported "
            f"(this trtserve reads {FORMAT_VERSION})"
        )
    return manifest


def verify_version_dir(version_dir: Path) -> dict:
    """Return the manifest of `version_dir` after checking every file it lists; raise ArtifactError."""
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    files = manifest["files"]
    for rel, record in files.items():
        path = resolve_inside(version_dir, rel, "file")
        if not path.is_file():
            raise ArtifactError(f"{version_dir}: {rel} is listed in the manifest but missing")
        size = path.stat().st_size
        if size != record["bytes"]:
            raise ArtifactError(
                f"{version_dir}: {rel} is {size} bytes, the manifest says {record['bytes']}; "
                "the file was changed or truncated"
            )
        if sha256_file(path) != record["sha256"]:
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
    for engine in manifest["engines"]:
        if engine["file"] not in files:
            raise ArtifactError(f"{version_dir}: engine {engine['file']!r} is not listed in the manifest's files")
    return manifest
