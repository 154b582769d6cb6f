"""`manifest.json`: the one typed description of a model version, written by `convert` and read everywhere.

Every key is required (null where it does not apply), so a reader never guesses what produced a version.
Keys this trtserve does not know are ignored when reading: a newer writer may add some without breaking
older servers; a change they cannot ignore bumps `format_version`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from runtime.engine.dtypes import NAMES as DTYPE_NAMES
from runtime.engine.errors import ArtifactError, single_line
from runtime.engine.signature import DimRange, Signature, TensorSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARITY = "parity.json"
PARITY_SAMPLES = "parity/samples.npz"  # parity inputs and PyTorch reference outputs
UPLOADS = ".uploads"  # in an object store, beside a model's versions: one folder per publisher's upload


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Tensor(_Record):
    name: str
    dtype: str  # a name from runtime.engine.dtypes
    shape: list[int | str]  # sizes, or names of dims declared under `dims`


class Dim(_Record):
    min: int
    opt: int
    max: int


class Source(_Record):
    factory: str  # module:callable that builds the PyTorch model
    weights_sha256: str  # over the state dict (runtime.engine.torch_model.weights_sha256)
    git_commit: str | None
    git_dirty: bool | None = None
    config: str | None = None  # the model config's file name
    config_sha256: str | None = None
    description: str | None = None


class FileRecord(_Record):
    sha256: str
    bytes: int


class Toolchain(_Record):
    python: str | None = None
    torch: str | None = None
    onnx: str | None = None
    onnxruntime: str | None = None
    tensorrt: str | None = None
    cuda: str | None = None
    gpu: str | None = None
    driver: str | None = None  # the NVIDIA driver, where there is a GPU


class OnnxExport(_Record):
    opset: int
    exporter: str  # dynamo or torchscript
    notes: list[str] = Field(default_factory=list)  # why a fallback was taken


class EngineEntry(_Record):
    file: str
    backend: str
    precision: str
    compute_capability: str | None  # TensorRT plans only
    tensorrt_version: str | None
    gpu_name: str | None = None  # TensorRT plans: the GPU and NVIDIA driver it was built on
    driver_version: str | None = None
    profiles: list[dict[str, dict[str, list[int]]]]  # per optimization profile: input -> min/opt/max shape


class OutputParity(_Record):
    passed: bool
    max_abs: float
    max_rel: float
    mismatch_fraction: float = 0.0
    nonfinite: int = 0
    cosine: float = 1.0
    atol: float
    rtol: float
    would_pass: str | None = None  # the tolerance that would have passed, for a failed output


class ParityRecord(_Record):
    backend: str
    precision: str
    passed: bool
    outputs: dict[str, OutputParity]
    samples: int
    error: str | None = None


class Packaged(_Record):
    files: list[str]


class Evaluation(_Record):
    """The version's score on the labelled eval set packaged with it (runtime.engine.evaluation)."""

    metric: str  # accuracy | cosine
    output: str  # the output the metric is taken on
    value: float
    rows: int
    margin: float  # a rollout's eval gate passes a candidate scoring at least stable's value minus this
    file: str  # the eval set, in `files`
    data_sha256: str
    backend: str  # the engine that scored it
    precision: str


class ReferenceStats(_Record):
    """Where the version's reference statistics are (runtime.monitor.reference) and what they came from."""

    file: str  # in `files`
    rows: int
    source: str  # the model config's `reference`


class Serving(_Record):
    max_batch_size: int
    max_queue_delay_ms: float
    # dim -> input -> pad value: requests that differ in dim share engine calls, padded with these
    pad: dict[str, dict[str, float]] = Field(default_factory=dict)


class Manifest(_Record):
    format_version: int
    name: str
    version: int
    created_at: str  # UTC, ISO 8601
    source: Source
    inputs: list[Tensor]
    outputs: list[Tensor]
    dims: dict[str, Dim]
    files: dict[str, FileRecord]  # every file of the version but the manifest, relative paths
    toolchain: Toolchain
    onnx: OnnxExport
    engines: list[EngineEntry]
    parity: list[ParityRecord]
    preprocessing: dict[str, Packaged] | None  # e.g. {"tokenizer": {"files": [...]}}
    serving: Serving
    evaluation: Evaluation | None = None  # when the model config declares an eval set
    reference: ReferenceStats | None = None  # when the model config declares reference data
    # In an object store: the folder holding the version's files, relative to the model's folder (one
    # publisher's own upload, runtime.engine.remote); None: beside the manifest (on disk, and older stores).
    files_under: str | None = Field(default=None, pattern=rf"^{re.escape(UPLOADS)}/[0-9a-f]{{32}}$")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        """What the signature and the loaders rely on: known dtypes, dims declared, ranges in order."""
        for name, d in self.dims.items():
            if not 0 <= d.min <= d.opt <= d.max:
                raise PydanticCustomError(
                    "manifest", "dims.{name}: expected 0 <= min <= opt <= max, got {d}", {"name": name, "d": d}
                )
        for kind, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [t.name for t in tensors]
            for i, t in enumerate(tensors):
                where = f"{kind}[{i}] {t.name!r}"
                if names.count(t.name) > 1:
                    raise PydanticCustomError("manifest", "{where}: named twice", {"where": where})
                if t.dtype not in DTYPE_NAMES:
                    raise PydanticCustomError(
                        "manifest", "{where}: unknown dtype {dtype!r}", {"where": where, "dtype": t.dtype}
                    )
                for dim in t.shape:
                    if isinstance(dim, str) and dim not in self.dims:
                        raise PydanticCustomError(
                            "manifest", "{where}: dim {dim!r} is not declared under dims", {"where": where, "dim": dim}
                        )
                    if isinstance(dim, int) and dim < 0:
                        raise PydanticCustomError(
                            "manifest", "{where}: negative size {dim}", {"where": where, "dim": dim}
                        )
        return self

    @property
    def signature(self) -> Signature:
        return Signature(
            inputs=tuple(TensorSpec(t.name, t.dtype, tuple(t.shape)) for t in self.inputs),
            outputs=tuple(TensorSpec(t.name, t.dtype, tuple(t.shape)) for t in self.outputs),
            dims={name: DimRange(d.min, d.opt, d.max) for name, d in self.dims.items()},
        )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_manifest(doc: Any, where: str | Path) -> Manifest:
    """A manifest from its JSON document; ArtifactError naming the first key at fault."""
    if not isinstance(doc, dict):
        raise ArtifactError(f"{where}: expected a JSON object")
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as e:
        error = e.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "missing":
            raise ArtifactError(f"{where}: missing key {key!r}") from None
        message = single_line(error["msg"])  # whatever the value held
        raise ArtifactError(f"{where}: {key}: {message}" if key else f"{where}: {message}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: format_version {manifest.format_version!r} is not supported "
            f"(this trtserve reads {FORMAT_VERSION})"
        )
    return manifest


def read_manifest(version_dir: str | Path) -> Manifest:
    """The manifest of a version directory, checked for shape (not for file integrity: see
    runtime.engine.artifact.verify_version_dir)."""
    path = Path(version_dir) / MANIFEST
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{version_dir}: no {MANIFEST}; not a model version directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    return parse_manifest(doc, path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> FileRecord:
    return FileRecord(sha256=sha256_file(path), bytes=path.stat().st_size)


def write_manifest(version_dir: Path, fields: dict[str, Any]) -> Manifest:
    """Checksum every file under `version_dir` and write its manifest from `fields` (every key but
    `files`); return it. The manifest is written last: a directory with one is complete."""
    files = {
        path.relative_to(version_dir).as_posix(): file_record(path)
        for path in sorted(p for p in version_dir.rglob("*") if p.is_file())
        if path.relative_to(version_dir).as_posix() != MANIFEST
    }
    manifest = parse_manifest({**fields, "files": files}, version_dir / MANIFEST)
    (version_dir / MANIFEST).write_bytes(encode_manifest(manifest))
    return manifest


def encode_manifest(manifest: Manifest) -> bytes:
    """The bytes of `manifest.json`: one encoding for every writer (a build, a renumbered publish, a store)."""
    return (json.dumps(manifest.to_json(), indent=2) + "\n").encode()
