"""Comparing an engine's outputs with the reference's, Polygraphy's way.

An element fails only if |out - ref| > atol AND |out - ref| / |ref| > rtol; any NaN or Inf in the
output fails outright. A failed comparison reports, per output, the tolerance that would have passed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from convert.config import Tolerance
from runtime.engine.manifest import OutputParity, ParityRecord

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
        out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
        # A NaN/Inf on either side fails; it is counted apart and kept out of the statistics.
        finite = np.isfinite(out64) & np.isfinite(ref64)
        self.nonfinite += int((~finite).sum())
        out64, ref64 = np.where(finite, out64, 0.0), np.where(finite, ref64, 0.0)
        diff = np.abs(out64 - ref64)
        rel = diff / np.maximum(np.abs(ref64), _TINY)
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


@dataclass
class ParityResult:
    backend: str
    precision: str
    outputs: dict[str, OutputStats]
    samples: int
    error: str | None = None  # the engine failed to run at all

    @property
    def passed(self) -> bool:
        return self.error is None and all(s.passed for s in self.outputs.values())

    def record(self) -> ParityRecord:
        """What the manifest keeps of this comparison."""
        return ParityRecord(
            backend=self.backend,
            precision=self.precision,
            passed=self.passed,
            outputs={name: stats.record() for name, stats in self.outputs.items()},
            samples=self.samples,
            error=self.error,
        )

    def failures(self) -> list[str]:
        if self.error:
            return [f"{self.backend} {self.precision}: {self.error}"]
        lines = []
        for name, s in self.outputs.items():
            if s.passed:
                continue
            lines.append(
                f"{self.backend} {self.precision} output {name!r}: max abs {s.max_abs:.3g}, max rel {s.max_rel:.3g}, "
                f"{s.mismatch_fraction:.2%} of elements beyond atol {s.atol:g} and rtol {s.rtol:g}"
                f"{f', {s.nonfinite} NaN/Inf' if s.nonfinite else ''}; would pass with {s.would_pass()}"
            )
        return lines


def compare(
    backend: str,
    precision: str,
    run: Callable[[dict], dict[str, np.ndarray]],
    feeds: Sequence[dict[str, np.ndarray]],
    references: Sequence[dict[str, np.ndarray]],
    tolerance_for: Callable[[str], Tolerance | OutputParity],  # anything with atol and rtol
    progress: Callable[[int], None] | None = None,
) -> ParityResult:
    names = list(references[0])
    stats = {n: OutputStats(tolerance_for(n).atol, tolerance_for(n).rtol) for n in names}
    for index, (feed, reference) in enumerate(zip(feeds, references, strict=True)):
        try:
            outputs = run(feed)
        except Exception as e:  # an engine that cannot run a sample fails parity; the reason is kept
            return ParityResult(backend, precision, stats, index, f"failed on sample {index}: {type(e).__name__}: {e}")
        for name in names:
            stats[name].add(np.asarray(outputs[name]), reference[name])
        if progress:
            progress(index + 1)
    return ParityResult(backend, precision, stats, len(feeds))


def format_table(results: Sequence[ParityResult]) -> str:
    header = (
        f"{'backend':<12} {'precision':<9} {'output':<16} {'max_abs':>9} {'max_rel':>9} {'mismatch':>8} "
        f"{'cosine':>10} {'atol':>8} {'rtol':>8}  result"
    )
    lines = [header]
    for r in results:
        if r.error:
            lines.append(
                f"{r.backend:<12} {r.precision:<9} {'-':<16} {'':>9} {'':>9} {'':>8} {'':>10} {'':>8} {'':>8}  ERROR"
            )
            continue
        for name, s in r.outputs.items():
            lines.append(
                f"{r.backend:<12} {r.precision:<9} {name:<16} {s.max_abs:>9.2e} {s.max_rel:>9.2e} "
                f"{s.mismatch_fraction:>8.2%} {s.min_cosine:>10.7f} {s.atol:>8.1e} {s.rtol:>8.1e}  "
                f"{'pass' if s.passed else 'FAIL'}"
            )
    return "\n".join(lines)
