"""Drift tests, with Evidently's defaults chosen by the reference's size, computed by scipy.

Reference of at most 1000 rows: two-sample Kolmogorov-Smirnov (numeric) or chi-squared (categorical),
drifted at p < 0.05. Larger: Wasserstein distance normed by the reference's std (numeric) or
Jensen-Shannon distance (categorical), drifted at >= 0.1. Embeddings: a kernel two-sample test (MMD with
an RBF kernel, bandwidth by the median heuristic, p-value by permutation), drifted at p < 0.05. PSI on the
reference's bins is reported beside every numeric and categorical feature. A tensor is drifted when at
least half of its features are (Evidently's dataset rule).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from runtime.monitor.features import CATEGORICAL, NUMERIC, VECTORS
from runtime.monitor.reference import FeatureReference

SMALL_REFERENCE = 1000  # rows: at most this many, p-value tests; above, distances
P_VALUE = 0.05
DISTANCE = 0.1
PSI = 0.1
MMD_RESAMPLES = 200
_PSI_FLOOR = 1e-4  # Evidently's: an empty bin counts as this share
_STD_FLOOR = 1e-3  # Evidently's: a constant reference feature is normed by this


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    test: str
    score: float
    threshold: float
    drifted: bool
    psi: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TensorDrift:
    name: str
    role: str
    drifted: bool
    features: list[FeatureDrift]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "role": self.role,
            "drifted": self.drifted,
            "features": [f.to_json() for f in self.features],
        }


def choose_test(kind: str, reference_rows: int) -> str:
    if kind == VECTORS:
        return "mmd"
    small = reference_rows <= SMALL_REFERENCE
    if kind == CATEGORICAL:
        return "chisquare" if small else "jensenshannon"
    return "ks" if small else "wasserstein"


def psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Population stability index: sum over bins of (current - reference) x ln(current / reference), shares."""
    # scipy is imported where it is used, here and below: at module level it cost every app build ~0.7 s.
    from scipy.special import rel_entr

    ref = np.maximum(reference_counts / max(reference_counts.sum(), 1), _PSI_FLOOR)
    cur = np.maximum(current_counts / max(current_counts.sum(), 1), _PSI_FLOOR)
    return float(np.sum(rel_entr(cur, ref) + rel_entr(ref, cur)))


def numeric_drift(ref: FeatureReference, reference_rows: int, sample: np.ndarray, counts: np.ndarray) -> FeatureDrift:
    """`sample`: the window's values (a bounded sample); `counts`: all its values on the reference's cuts."""
    from scipy.stats import ks_2samp, wasserstein_distance

    test = choose_test(NUMERIC, reference_rows)
    reference = np.asarray(ref.sample, dtype=np.float64)
    if test == "ks":
        score = float(ks_2samp(reference, sample).pvalue)
        drifted, threshold = score < P_VALUE, P_VALUE
    else:
        score = float(wasserstein_distance(reference, sample) / max(ref.std, _STD_FLOOR))
        drifted, threshold = score >= DISTANCE, DISTANCE
    return FeatureDrift(ref.feature, test, score, threshold, bool(drifted), psi(np.asarray(ref.counts), counts))


def categorical_drift(ref: FeatureReference, reference_rows: int, counts: dict[int, int]) -> FeatureDrift:
    """`counts`: every value the window saw, with how often."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chisquare

    test = choose_test(CATEGORICAL, reference_rows)
    keys = sorted(set(ref.categories) | set(counts))
    reference = dict(zip(ref.categories, ref.counts, strict=True))
    ref_counts = np.array([reference.get(k, 0) for k in keys], dtype=np.float64)
    cur_counts = np.array([counts.get(k, 0) for k in keys], dtype=np.float64)
    if test == "chisquare":
        expected = np.maximum(ref_counts / ref_counts.sum(), 1e-9)
        expected = expected / expected.sum() * cur_counts.sum()
        score = float(chisquare(cur_counts, expected).pvalue)
        drifted, threshold = score < P_VALUE, P_VALUE
    else:
        score = float(jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum()))
        drifted, threshold = score >= DISTANCE, DISTANCE
    return FeatureDrift(ref.feature, test, score, threshold, bool(drifted), psi(ref_counts, cur_counts))


def mmd_pvalue(reference: np.ndarray, current: np.ndarray, rng: np.random.Generator | int = 0) -> tuple[float, float]:
    """(MMD^2, p-value) of a kernel two-sample test: RBF kernel, bandwidth the median pairwise distance."""
    from scipy.spatial.distance import cdist
    from scipy.stats import permutation_test

    pooled = np.concatenate([reference, current]).astype(np.float64)
    squared = cdist(pooled, pooled, "sqeuclidean")
    median = np.median(squared[np.triu_indices_from(squared, k=1)])
    kernel = np.exp(-squared / (2 * max(median, 1e-12)))

    def mmd2(x: np.ndarray, y: np.ndarray, axis: int = -1) -> float:
        x, y = x.astype(np.intp), y.astype(np.intp)
        return float(kernel[np.ix_(x, x)].mean() + kernel[np.ix_(y, y)].mean() - 2 * kernel[np.ix_(x, y)].mean())

    n = len(reference)
    result = permutation_test(
        (np.arange(n), np.arange(n, len(pooled))),
        mmd2,
        permutation_type="independent",
        vectorized=False,
        n_resamples=MMD_RESAMPLES,
        alternative="greater",
        random_state=rng,
    )
    return float(result.statistic), float(result.pvalue)


def vectors_drift(ref: FeatureReference, sample: np.ndarray, rng: np.random.Generator | int = 0) -> FeatureDrift:
    _, p = mmd_pvalue(np.asarray(ref.sample, dtype=np.float64), sample, rng)
    return FeatureDrift(ref.feature, "mmd", p, P_VALUE, p < P_VALUE)


def tensor_drifted(features: list[FeatureDrift]) -> bool:
    """Evidently's dataset rule: drifted when at least half of the features are."""
    return bool(features) and 2 * sum(f.drifted for f in features) >= len(features)
