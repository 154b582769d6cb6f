"""Online drift windows of one model version in one replica.

A window closes every `window_s` of wall-clock time (boundaries start + k x window_s); one that has
fewer than `min_rows` rows by its boundary is merged into the next. While open, a window counts every
row on the reference's bins (or categories) and keeps a bounded uniform sample per tensor (reservoir
sampling) for the two-sample tests; when it closes, each feature is tested against the reference.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from runtime.monitor.drift import (
    TensorDrift,
    categorical_drift,
    numeric_drift,
    tensor_drifted,
    vectors_drift,
)
from runtime.monitor.features import CATEGORICAL, VECTORS
from runtime.monitor.reference import SAMPLE_ROWS, VECTOR_ROWS, Reference, TensorReference


@dataclass
class WindowClock:
    window_s: float = 60.0
    min_rows: int = 500
    start: float = 0.0
    merged_until: float | None = None  # the last boundary passed with too few rows

    def due(self, now: float, rows: int) -> float | None:
        """The end of the window that closes now, or None.

        Windows end on the boundaries start + k x window_s. At the first look past a new boundary the
        window closes there when it holds `min_rows` rows; otherwise it is merged into the next window
        (it runs on to the next boundary, even if rows arrive in between). `start` moves to the end of
        each closed window.
        """
        boundary = self.start + (now - self.start) // self.window_s * self.window_s
        if boundary <= self.start or (self.merged_until is not None and boundary <= self.merged_until):
            return None
        if rows < self.min_rows:
            self.merged_until = boundary
            return None
        self.merged_until = None
        return boundary


class Reservoir:
    """A uniform sample of at most `size` rows of everything added (Vitter's algorithm R, vectorised)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.rng = rng
        self.seen = 0
        self.rows: dict[str, np.ndarray] = {}
        self.filled = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        n = next(iter(batch.values())).shape[0]
        if not self.rows:
            self.rows = {k: np.empty((self.size, *v.shape[1:]), v.dtype) for k, v in batch.items()}
        take = min(n, self.size - self.filled)
        if take:
            for k, v in batch.items():
                self.rows[k][self.filled : self.filled + take] = v[:take]
            self.filled += take
        if take < n:  # row i of the rest replaces a random kept row with probability size / (seen + i + 1)
            seen = self.seen + take + np.arange(1, n - take + 1)
            slots = self.rng.integers(0, seen)
            keep = slots < self.size
            for k, v in batch.items():
                self.rows[k][slots[keep]] = v[take:][keep]
        self.seen += n

    def sample(self, feature: str) -> np.ndarray:
        return self.rows[feature][: self.filled]


class TensorWindow:
    def __init__(self, reference: TensorReference, rng: np.random.Generator) -> None:
        self.reference = reference
        self.spec = reference.spec
        self.kinds = {f.feature: f.type for f in reference.features}
        vectors = any(t == VECTORS for t in self.kinds.values())
        self.sample = Reservoir(VECTOR_ROWS if vectors else SAMPLE_ROWS, rng)
        self.bins = {f.feature: np.zeros(len(f.counts), np.int64) for f in reference.features if f.type != VECTORS}
        self.categories = {f.feature: Counter() for f in reference.features if f.type == CATEGORICAL}
        self.extra: dict[str, np.ndarray] = {}  # the last batch's features, for histograms

    def add(self, features: dict[str, np.ndarray]) -> None:
        """Count the rows of one batch, given their features (TensorFeatures.extract)."""
        for f in self.reference.features:
            values = features[f.feature]
            if f.type == CATEGORICAL:
                found, n = np.unique(values, return_counts=True)
                self.categories[f.feature].update(dict(zip(found.tolist(), n.tolist(), strict=True)))
            elif f.type != VECTORS:
                self.bins[f.feature] += f.bin_counts(values)
        self.sample.add({k: features[k] for k in self.kinds})

    def judge(self, reference_rows: int, rng: np.random.Generator) -> TensorDrift:
        results = []
        for f in self.reference.features:
            if f.type == VECTORS:
                results.append(vectors_drift(f, self.sample.sample(f.feature), rng))
            elif f.type == CATEGORICAL:
                results.append(categorical_drift(f, reference_rows, dict(self.categories[f.feature])))
            else:
                results.append(numeric_drift(f, reference_rows, self.sample.sample(f.feature), self.bins[f.feature]))
        return TensorDrift(self.spec.name, self.spec.role, tensor_drifted(results), results)


@dataclass(frozen=True)
class WindowResult:
    start: float
    end: float
    rows: int
    tensors: list[TensorDrift]

    def to_json(self) -> dict:
        return {
            "window": {"start": self.start, "end": self.end, "rows": self.rows},
            "tensors": [t.to_json() for t in self.tensors],
        }


class DriftWindow:
    """What one model version served since its window opened, judged against its reference when it closes."""

    def __init__(self, reference: Reference, clock: WindowClock, seed: int = 0) -> None:
        self.reference = reference
        self.clock = clock
        self.rng = np.random.default_rng(seed)
        self._open()

    def _open(self) -> None:
        self.rows = 0
        self.tensors = {t.name: TensorWindow(t, self.rng) for t in self.reference.tensors}

    def add(self, arrays: dict[str, np.ndarray], count_rows: bool = True) -> dict[str, dict[str, np.ndarray]]:
        """A batch of tensors by name (those the reference does not know are ignored); their features. Counted
        whole or not at all: a tensor whose features cannot be extracted raises before anything is counted.
        `count_rows` False: more tensors of rows already counted (an output added request by request)."""
        features = {name: w.spec.extract(arrays[name]) for name, w in self.tensors.items() if name in arrays}
        for name, values in features.items():
            self.tensors[name].add(values)
        if count_rows:
            self.rows += next((arrays[name].shape[0] for name in features), 0)
        return features

    def close_if_due(self, now: float) -> WindowResult | None:
        end = self.clock.due(now, self.rows)
        if end is None:
            return None
        judged = [w.judge(self.reference.rows, self.rng) for w in self.tensors.values() if w.sample.filled]
        result = WindowResult(self.clock.start, end, self.rows, judged)
        self.clock.start = end
        self._open()
        return result
