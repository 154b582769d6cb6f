"""Parity: an engine's outputs against PyTorch's over the artifact's samples, per output
(runtime.engine.comparison.OutputStats, Polygraphy's measures). A failed comparison reports, per output, the
tolerance that would have passed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from convert.model_config import Tolerance
from runtime.engine.comparison import OutputStats
from runtime.engine.manifest import OutputParity, ParityRecord

__all__ = ["OutputStats", "ParityResult", "compare", "format_table"]


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
