"""Comparing outputs with a reference, Polygraphy's way: the convert stage's parity and a rollout's
comparison of two versions' answers measure alike.

An element fails only if |out - ref| > atol AND |out - ref| / |ref| > rtol; any NaN or Inf fails
outright. Kept per output: max abs and rel difference, the mismatched fraction, the lowest cosine
similarity, and the tolerances that would have passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.engine.manifest import OutputParity

_TINY = float(np.finfo(np.float32).tiny)


@dataclass
class OutputStats:
    atol: float
    rtol: float
    max_abs: float = 0.0
    max_rel: float = 0.0
    mismatched: int = 0
    elements: int = 0
    nonfinite: int = 0
    min_cosine: float = 1.0
    atol_needed: float = 0.0  # the smallest atol that passes at this rtol
    rtol_needed: float = 0.0  # the smallest rtol that passes at this atol
    shape_errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.mismatched and not self.nonfinite and not self.shape_errors

    @property
    def mismatch_fraction(self) -> float:
        return self.mismatched / self.elements if self.elements else 0.0

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        if out.shape != ref.shape:
            self.shape_errors.append(f"shape {list(out.shape)} != reference {list(ref.shape)}")
            return
        out64, ref64, finite, diff, rel = differences(out, ref)
        self.nonfinite += int((~finite).sum())
        bad = (diff > self.atol) & (rel > self.rtol)
        self.elements += out.size
        self.mismatched += int(bad.sum())
        if out.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.max_rel = max(self.max_rel, float(rel.max()))
            self.atol_needed = max(self.atol_needed, float(diff[rel > self.rtol].max(initial=0.0)))
            self.rtol_needed = max(self.rtol_needed, float(rel[diff > self.atol].max(initial=0.0)))
            self.min_cosine = min(self.min_cosine, _cosine(out64, ref64))

    def record(self) -> OutputParity:
        return OutputParity(
            passed=self.passed,
            max_abs=self.max_abs,
            max_rel=self.max_rel,
            mismatch_fraction=self.mismatch_fraction,
            nonfinite=self.nonfinite,
            cosine=self.min_cosine,
            atol=self.atol,
            rtol=self.rtol,
            would_pass=None if self.passed else self.would_pass(),
        )

    def would_pass(self) -> str:
        if self.shape_errors:
            return f"no tolerance: {self.shape_errors[0]}"
        if self.nonfinite:
            return f"no tolerance: {self.nonfinite} NaN/Inf values"
        return (
            f"atol >= {_ceil(self.atol_needed)} (at rtol {self.rtol:g}) or "
            f"rtol >= {_ceil(self.rtol_needed)} (at atol {self.atol:g})"
        )


def differences(out: np.ndarray, ref: np.ndarray):
    """Element-wise, in float64: out and ref with NaN/Inf zeroed, where both are finite, |out - ref|, and
    that over |ref|. A NaN/Inf on either side fails; it is counted apart and kept out of the statistics.
    An element fails when beyond both atol (on the difference) and rtol (on the relative one)."""
    out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
    finite = np.isfinite(out64) & np.isfinite(ref64)
    out64, ref64 = np.where(finite, out64, 0.0), np.where(finite, ref64, 0.0)
    diff = np.abs(out64 - ref64)
    return out64, ref64, finite, diff, diff / np.maximum(np.abs(ref64), _TINY)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))


def _ceil(x: float) -> str:
    """A tolerance a little above x, written with two significant digits."""
    return f"{x * 1.01 + 1e-12:.2g}"
