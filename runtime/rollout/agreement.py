"""Do two versions of a model give the same answer? Measured as parity is (runtime.engine.comparison).

Both versions were proved within their recorded tolerances of the same PyTorch reference, so their
answers to one request may differ by up to the sum of the two: that sum is the tolerance here, per
output. A request agrees when every output is within it, with no NaN or Inf. For classifiers (a float
output of shape [batch, classes]) top-1 agreement is counted as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from runtime.engine.comparison import differences
from runtime.engine.manifest import Manifest
from runtime.rollout.analysis import Agreement


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


UNRECORDED = Tolerance(1e-4, 1e-3)  # for a version without a parity record of an output: fp32's usual


def tolerances(
    stable: Manifest, stable_engine: tuple[str, str], candidate: Manifest, candidate_engine: tuple[str, str]
) -> dict[str, Tolerance]:
    """Per output of the candidate, the sum of the tolerances each version's engine (backend, precision)
    passed parity with (UNRECORDED for a side that has no record of it)."""
    first, second = _recorded(stable, stable_engine), _recorded(candidate, candidate_engine)
    limits = {}
    for output in candidate.outputs:
        a, b = first.get(output.name, UNRECORDED), second.get(output.name, UNRECORDED)
        limits[output.name] = Tolerance(a.atol + b.atol, a.rtol + b.rtol)
    return limits


def _recorded(manifest: Manifest, engine: tuple[str, str]) -> dict:
    for record in manifest.parity:
        if (record.backend, record.precision) == engine:
            return record.outputs
    # An engine without a record of its own (e.g. torch, the reference itself) is held to the tightest one.
    tightest: dict = {}
    for record in manifest.parity:
        for name, output in record.outputs.items():
            if name not in tightest or output.atol < tightest[name].atol:
                tightest[name] = output
    return tightest


@dataclass
class AgreementCounter:
    """Comparisons of one model's stable and candidate answers, counted since it was made."""

    compared: int = 0
    agreed: int = 0
    top1_compared: int = 0
    top1_agreed: int = 0
    max_abs: float = 0.0
    min_cosine: float = 1.0

    def add(
        self,
        stable: Mapping[str, np.ndarray],
        candidate: Mapping[str, np.ndarray],
        limits: Mapping[str, Tolerance],
    ) -> bool:
        """Count one request's two answers; True when they agree."""
        return bool(self.add_many([(stable, candidate)], limits)[0])

    def add_many(
        self,
        pairs: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]],
        limits: Mapping[str, Tolerance],
    ) -> np.ndarray:
        """Count many requests' (stable, candidate) answers at once, each request judged on its own as
        OutputStats judges one (an element fails when beyond both atol and rtol; NaN or Inf fails; a shape
        that differs fails): one pass of numpy per output and shape, not one per request. Which agreed."""
        agreed = np.ones(len(pairs), dtype=bool)
        for name, tolerance in limits.items():
            groups: dict[tuple, list[int]] = {}
            for i, (stable, candidate) in enumerate(pairs):
                if name not in stable or name not in candidate:
                    continue
                ours, theirs = np.asarray(candidate[name]), np.asarray(stable[name])
                if ours.shape != theirs.shape or ours.ndim == 0:
                    agreed[i] = False
                    continue
                groups.setdefault((ours.shape[1:], ours.dtype.kind), []).append(i)
            for (shape, kind), members in groups.items():
                agreed[members] &= self._compare(name, pairs, members, shape, kind, tolerance)
        self.compared += len(pairs)
        self.agreed += int(agreed.sum())
        return agreed

    def _compare(self, name, pairs, members, shape, kind, tolerance: Tolerance) -> np.ndarray:
        """Whether each member request's output `name` agrees (all of one trailing shape)."""
        rows = np.array([len(pairs[i][1][name]) for i in members])
        ours = np.concatenate([np.asarray(pairs[i][1][name]) for i in members]).reshape(rows.sum(), -1)
        theirs = np.concatenate([np.asarray(pairs[i][0][name]) for i in members]).reshape(rows.sum(), -1)
        ours64, theirs64, finite, diff, rel = differences(ours, theirs)  # as parity measures
        bad_rows = (((diff > tolerance.atol) & (rel > tolerance.rtol)) | ~finite).any(axis=1)
        starts = np.concatenate([[0], np.cumsum(rows)[:-1]])
        has_rows = rows > 0
        bad = np.zeros(len(members), dtype=bool)
        if has_rows.any():
            bad[has_rows] = np.add.reduceat(bad_rows, starts[has_rows]) > 0
            self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
            dot, n1, n2 = (np.add.reduceat(v, starts[has_rows]) for v in _row_products(ours64, theirs64))
            norms = np.sqrt(n1 * n2)
            cosine = np.where(
                norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where((n1 == 0) & (n2 == 0), 1.0, 0.0)
            )
            self.min_cosine = min(self.min_cosine, float(cosine.min()))
        if len(shape) == 1 and shape[0] > 1 and kind == "f":  # a classifier's [batch, classes]
            self.top1_compared += int(rows.sum())
            self.top1_agreed += int((ours.argmax(axis=1) == theirs.argmax(axis=1)).sum())
        return ~bad

    def since(self, earlier: AgreementCounter) -> AgreementCounter:
        """What was counted after `earlier` (a copy taken then); extremes are those of the whole span."""
        counts = {f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self) if f.type == "int"}
        return AgreementCounter(**counts, max_abs=self.max_abs, min_cosine=self.min_cosine)

    def copy(self) -> AgreementCounter:
        return AgreementCounter(**{f.name: getattr(self, f.name) for f in fields(self)})

    def agreement(self) -> Agreement:
        return Agreement(self.compared, self.agreed)

    def to_dict(self) -> dict:
        return {
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement": self.agreed / self.compared if self.compared else None,
            "top1_agreement": self.top1_agreed / self.top1_compared if self.top1_compared else None,
            "max_abs": self.max_abs,
            "min_cosine": self.min_cosine,
        }


def _row_products(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: a.b, a.a, b.b (summed per request, they give each request's cosine similarity)."""
    return np.einsum("ij,ij->i", a, b), np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b)
