"""Do two versions of a model give the same answer? Measured as parity is (runtime.engine.parity).

Both versions were proved within their recorded tolerances of the same PyTorch reference, so their
answers to one request may differ by up to the sum of the two: that sum is the tolerance here, per
output. A request agrees when every output is within it, with no NaN or Inf. For classifiers (a float
output of shape [batch, classes]) top-1 agreement is counted as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from runtime.engine.manifest import Manifest
from runtime.engine.parity import OutputStats
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
        agreed = True
        for name, tolerance in limits.items():
            if name not in stable or name not in candidate:
                continue
            ours, theirs = np.asarray(candidate[name]), np.asarray(stable[name])
            stats = OutputStats(tolerance.atol, tolerance.rtol)
            stats.add(ours, theirs)
            agreed = agreed and stats.passed
            self.max_abs = max(self.max_abs, stats.max_abs)
            self.min_cosine = min(self.min_cosine, stats.min_cosine)
            if ours.shape == theirs.shape and ours.ndim == 2 and ours.shape[1] > 1 and ours.dtype.kind == "f":
                rows = ours.shape[0]
                self.top1_compared += rows
                self.top1_agreed += int((ours.argmax(axis=1) == theirs.argmax(axis=1)).sum())
        self.compared += 1
        self.agreed += int(agreed)
        return agreed

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
