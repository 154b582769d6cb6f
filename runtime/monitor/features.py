"""What drift is judged on: the features of one tensor, row by row.

A small tensor (at most SMALL elements a row, fixed shape) is judged element by element (features "0",
"1", ...). A larger one by summaries per row: mean, std and L2 norm, plus `length` (its elements that
are not padding) where the model pads it. Padding (the pad value the model's serving config declares for
the tensor) is left out of the summaries, so requests of different lengths compare alike. An output of
kind `logits` or `probabilities` adds its argmax `class` (categorical), top-1 `confidence` and `entropy`;
an `embedding` is judged as one multivariate feature, its vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

SMALL = 32
KINDS = ("logits", "probabilities", "embedding")
NUMERIC, CATEGORICAL, VECTORS = "numeric", "categorical", "vectors"
SUMMARIES = ("mean", "std", "norm")
CLASSIFIER = (("class", CATEGORICAL), ("confidence", NUMERIC), ("entropy", NUMERIC))


@dataclass(frozen=True)
class TensorFeatures:
    """How one tensor is turned into features: the names and types, in order."""

    name: str
    role: str  # input | output
    kind: str | None  # None, or one of KINDS (outputs)
    per_element: int | None  # elements a row when judged element by element, else None (summaries)
    pad: float | None = None

    @classmethod
    def of(cls, name: str, role: str, shape: tuple | list, kind: str | None = None, pad: float | None = None):
        rest = list(shape[1:])
        small = kind != "embedding" and all(isinstance(d, int) for d in rest) and prod(rest) <= SMALL
        return cls(name, role, kind, prod(rest) if small else None, pad)

    @property
    def features(self) -> list[tuple[str, str]]:
        if self.kind == "embedding":
            return [("embedding", VECTORS)]
        if self.per_element is not None:
            names = [(str(i), NUMERIC) for i in range(self.per_element)]
        else:
            names = [(s, NUMERIC) for s in SUMMARIES] + ([("length", NUMERIC)] if self.pad is not None else [])
        if self.kind in ("logits", "probabilities"):
            names += list(CLASSIFIER)
        return names

    def extract(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """feature -> values per row ([rows] floats or ints; [rows, dim] for an embedding)."""
        rows = array.shape[0]
        flat = np.asarray(array).reshape(rows, -1)
        if self.kind == "embedding":
            return {"embedding": flat.astype(np.float32, copy=False)}
        out: dict[str, np.ndarray] = {}
        if self.per_element is not None:
            if flat.shape[1] != self.per_element:
                raise ValueError(f"{self.name}: expected {self.per_element} elements a row, got {flat.shape[1]}")
            values = flat.astype(np.float64, copy=False)
            out.update({str(i): values[:, i] for i in range(self.per_element)})
        else:
            out.update(summaries(flat, None if self.pad is None else flat != self.pad))
            if self.pad is None:
                out.pop("length")
        if self.kind in ("logits", "probabilities"):
            # Imported here, as in runtime.monitor.drift: at module level scipy cost every app build ~0.7 s.
            from scipy.special import softmax
            from scipy.stats import entropy

            values = flat.astype(np.float64, copy=False)
            probs = softmax(values, axis=1) if self.kind == "logits" else values
            out["class"] = np.argmax(probs, axis=1).astype(np.int64)
            out["confidence"] = np.max(probs, axis=1)
            out["entropy"] = entropy(np.clip(probs, 1e-12, None), axis=1)
        return out


def summaries(values: np.ndarray, valid: np.ndarray | None) -> dict[str, np.ndarray]:
    """Mean, std, L2 norm and count of each row's valid elements (all where `valid` is None), in float64
    whatever the tensor's type (sums accumulated in float64, no float64 copy of an unpadded tensor)."""
    if valid is None:
        count = np.full(values.shape[0], values.shape[1], np.float64)
        total = values.sum(axis=1, dtype=np.float64)
        squares = np.einsum("ij,ij->i", values, values, dtype=np.float64)
        mean = total / np.maximum(count, 1)
        var = np.maximum(squares / np.maximum(count, 1) - mean**2, 0.0)
        return {"mean": mean, "std": np.sqrt(var), "norm": np.sqrt(squares), "length": count}
    values = values.astype(np.float64, copy=False)
    count = valid.sum(axis=1)
    kept = np.where(valid, values, 0.0)
    mean = kept.sum(axis=1) / np.maximum(count, 1)
    var = (np.where(valid, (values - mean[:, None]) ** 2, 0.0)).sum(axis=1) / np.maximum(count, 1)
    return {
        "mean": mean,
        "std": np.sqrt(var),
        "norm": np.sqrt((kept**2).sum(axis=1)),
        "length": count.astype(np.float64),
    }
