"""A model version's score on a labelled eval set, computed offline by the engine that serves it.

The eval set travels inside the artifact (`evaluation.npz`: one array per model input, plus `labels`),
checksummed like every file, and the manifest records the metric, the output it is taken on, the
score `convert build` measured and the eval set's sha256. A rollout's eval gate compares a
candidate's score with its stable version's on the same eval set: read from the stable's manifest when
it was scored on the same file, else computed here on the stable version.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from runtime.engine.artifact import read_verified
from runtime.engine.errors import ArtifactError
from runtime.engine.loader import load_engine
from runtime.engine.manifest import read_manifest

EVAL_FILE = "evaluation.npz"
LABELS = "labels"


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy: the share of rows whose highest-scoring class is the label."""
    if outputs.ndim != 2 or labels.shape != (outputs.shape[0],):
        raise ValueError(
            f"accuracy takes [rows, classes] outputs and [rows] labels, got {outputs.shape}, {labels.shape}"
        )
    return float(np.mean(np.argmax(outputs, axis=1) == labels))


def cosine(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Mean cosine similarity of each row's output vector to its label vector (e.g. reference embeddings)."""
    a = outputs.reshape(outputs.shape[0], -1).astype(np.float64)
    b = labels.reshape(labels.shape[0], -1).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cosine takes outputs and label vectors of one shape, got {a.shape}, {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"accuracy": accuracy, "cosine": cosine}


def score(
    infer: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    metric: str,
    output: str,
    batch: int,
) -> float:
    """`metric` of `output` over the eval set, inferred `batch` rows at a time (the engine's limit)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    rows = len(labels)
    if rows == 0 or any(len(a) != rows for a in inputs.values()):
        raise ValueError(f"the eval set needs one input row per label: {rows} labels, inputs of {_rows(inputs)}")
    parts = []
    for start in range(0, rows, batch):
        result = infer({name: a[start : start + batch] for name, a in inputs.items()})
        if output not in result:
            raise ValueError(f"the model has no output {output!r}; it has {', '.join(result)}")
        parts.append(np.asarray(result[output]))
    return METRICS[metric](np.concatenate(parts), labels)


def read_eval_set(version_dir: Path, input_names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The inputs and labels packaged in a version, checked against its manifest as read (the version
    need not have been verified whole); ArtifactError naming what is missing or wrong."""
    manifest = read_manifest(version_dir)
    if manifest.evaluation is None:
        raise ArtifactError(f"{version_dir}: the manifest declares no eval set")
    path = Path(version_dir) / manifest.evaluation.file
    data = read_verified(version_dir, manifest, manifest.evaluation.file, "evaluation.file")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            found = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"{path}: cannot read the eval set: {e}") from None
    missing = [n for n in [*input_names, LABELS] if n not in found]
    if missing:
        raise ArtifactError(f"{path}: the eval set has no {', '.join(missing)}")
    return {n: found[n] for n in input_names}, found[LABELS]


def score_version(version_dir: Path, eval_dir: Path, output: str, metric: str) -> float:
    """Version `version_dir` scored on the eval set packaged in `eval_dir` (which may be another version),
    by its fp32 ONNX Runtime engine, as `convert build` scores: like for like with the recorded scores.
    Both are checked: `version_dir` whole as it loads, the eval set's bytes as they are read."""
    batch = read_manifest(version_dir).serving.max_batch_size
    with load_engine(version_dir, "onnxruntime", "fp32") as engine:
        inputs, labels = read_eval_set(eval_dir, [t.name for t in engine.signature.inputs])
        return score(engine.infer, inputs, labels, metric, output, batch)


def _rows(inputs: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {len(a)} rows" for name, a in inputs.items())
