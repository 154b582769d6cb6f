"""`reference.json`: what a model version saw when it was built, the yardstick for drift while it serves.

`convert build` runs the model on the config's reference data and records, per input and output tensor
and per feature (runtime.monitor.features): quantile bin cuts with the reference's counts in each bin
(or the category counts), the reference's std, and a bounded, seeded sample for two-sample tests.
Online windows count what they serve on the same cuts, so counts add across replicas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from runtime.engine.artifact import read_verified
from runtime.engine.manifest import Manifest
from runtime.monitor.features import CATEGORICAL, VECTORS, TensorFeatures

REFERENCE_FILE = "reference.json"
FORMAT_VERSION = 1
BINS = 10
SAMPLE_ROWS = 1000  # numeric and categorical features: rows kept for the two-sample tests
VECTOR_ROWS = 300  # embeddings: vectors kept for the kernel two-sample test


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class FeatureReference(_Record):
    feature: str
    type: str  # numeric | categorical | vectors
    cuts: list[float] = []  # numeric: interior bin edges; bin i holds cuts[i-1] <= x < cuts[i]
    categories: list[int] = []  # categorical: the values seen
    counts: list[int] = []  # per bin (numeric, len(cuts)+1) or per category
    std: float = 0.0
    sample: list[Any] = []  # floats; ints (categorical); vectors (lists of floats)

    def bin_counts(self, values: np.ndarray) -> np.ndarray:
        """How many of `values` fall in each of this feature's bins (or categories; others are not counted)."""
        if self.type == CATEGORICAL:
            index = {c: i for i, c in enumerate(self.categories)}
            counts = np.zeros(len(self.categories), dtype=np.int64)
            found, n = np.unique(values, return_counts=True)
            for value, count in zip(found.tolist(), n.tolist(), strict=True):
                if value in index:
                    counts[index[value]] += count
            return counts
        bins = np.searchsorted(np.asarray(self.cuts), values, side="right")
        return np.bincount(bins, minlength=len(self.cuts) + 1).astype(np.int64)


class TensorReference(_Record):
    name: str
    role: str  # input | output
    kind: str | None = None
    per_element: int | None = None
    pad: float | None = None
    features: list[FeatureReference]

    @property
    def spec(self) -> TensorFeatures:
        return TensorFeatures(self.name, self.role, self.kind, self.per_element, self.pad)


class Reference(_Record):
    format_version: int
    rows: int  # reference rows: picks the drift tests (runtime.monitor.drift)
    source: str  # what the reference data was (a callable or a file)
    tensors: list[TensorReference]

    def tensor(self, name: str) -> TensorReference | None:
        return next((t for t in self.tensors if t.name == name), None)


def feature_reference(feature: str, kind: str, values: np.ndarray, rng: np.random.Generator) -> FeatureReference:
    rows = values.shape[0]
    keep = np.sort(rng.choice(rows, size=min(rows, VECTOR_ROWS if kind == VECTORS else SAMPLE_ROWS), replace=False))
    if kind == VECTORS:
        return FeatureReference(feature=feature, type=kind, sample=values[keep].astype(float).round(6).tolist())
    if kind == CATEGORICAL:
        categories, counts = np.unique(values.astype(np.int64), return_counts=True)
        return FeatureReference(
            feature=feature,
            type=kind,
            categories=categories.tolist(),
            counts=counts.tolist(),
            sample=values[keep].astype(np.int64).tolist(),
        )
    values = values.astype(np.float64)
    cuts = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(cuts, values, side="right"), minlength=len(cuts) + 1)
    return FeatureReference(
        feature=feature,
        type=kind,
        cuts=cuts.tolist(),
        counts=counts.tolist(),
        std=float(np.std(values)),
        sample=values[keep].tolist(),
    )


def compute_reference(
    specs: list[TensorFeatures], arrays: dict[str, np.ndarray], source: str, seed: int = 0
) -> Reference:
    """The reference of `arrays` (inputs and outputs by name, one row per reference example)."""
    rows = {a.shape[0] for a in arrays.values()}
    if len(rows) != 1:
        raise ValueError(f"reference arrays must have one number of rows, got {sorted(rows)}")
    rng = np.random.default_rng(seed)
    tensors = []
    for spec in specs:
        extracted = spec.extract(arrays[spec.name])
        features = [feature_reference(name, kind, extracted[name], rng) for name, kind in spec.features]
        tensors.append(
            TensorReference(
                name=spec.name,
                role=spec.role,
                kind=spec.kind,
                per_element=spec.per_element,
                pad=spec.pad,
                features=features,
            )
        )
    return Reference(format_version=FORMAT_VERSION, rows=rows.pop(), source=source, tensors=tensors)


def write_reference(path: Path, reference: Reference) -> None:
    path.write_text(json.dumps(reference.model_dump(mode="json"), separators=(",", ":")) + "\n")


def read_reference(path: Path) -> Reference:
    """The reference of a reference.json file; ValueError naming what is wrong."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise _unreadable(path, e) from None
    return _parse(data, path)


def read_version_reference(version_dir: Path, manifest: Manifest) -> Reference | None:
    """The reference a version packages (None when it has none), read from its `reference.file`: confined
    to the version directory and checked against its sha256 as read (ArtifactError), so a version that
    was never verified whole is no way around the check."""
    if manifest.reference is None:
        return None
    data = read_verified(version_dir, manifest, manifest.reference.file, "reference.file")
    return _parse(data, Path(version_dir) / manifest.reference.file)


def _parse(data: bytes, where: Path) -> Reference:
    try:
        reference = Reference.model_validate(json.loads(data))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as e:
        raise _unreadable(where, e) from None
    if reference.format_version != FORMAT_VERSION:
        raise ValueError(f"{where}: reference format_version {reference.format_version} is not supported")
    return reference


def _unreadable(where: Path, e: Exception) -> ValueError:
    return ValueError(f"{where}: not a readable reference ({type(e).__name__}: {str(e).splitlines()[0]})")
