"""Is one analysis interval of a rollout a pass, a failure, or too thin to tell?

Judged on the candidate against stable over the same interval, as Flagger and Argo Rollouts judge a
canary, with output agreement as a signal of its own:
- errors: the candidate's error ratio (server errors, overload and timeouts included, over the answers
  judged; a client's error is neither: runtime.rollout.version_counts.judged) within an absolute bound, and not
  above `error_ratio_vs_stable` times stable's (ratios under a tenth of the bound are noise and not
  compared);
- latency: its p99 within `max_p99_ratio` times stable's p99 (differences under `p99_slack_ms` are noise
  and pass: a 1 ms model's p99 doubles with one scheduler hiccup) and, when set, an absolute `max_p99_ms`.
  Both versions' latencies are of the same thing, the engine call that ran each request, answered or
  mirrored, so a shadowed candidate is compared with stable like for like;
- agreement: the share of compared outputs within the artifact's tolerances at least `min_agreement`;
- volume: with fewer than `min_requests` candidate requests (or no compared outputs) the interval is
  neither a pass nor a failure: it is extended.
At 100 % the stable figures are the reference from the last interval in which stable answered itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_error_ratio: float = Field(0.01, ge=0, le=1)
    error_ratio_vs_stable: float = Field(2.0, ge=1)
    max_p99_ratio: float = Field(1.5, gt=0)
    p99_slack_ms: float = Field(2.0, ge=0)
    max_p99_ms: float | None = Field(None, gt=0)
    min_agreement: float = Field(0.99, ge=0, le=1)
    min_requests: int = Field(100, ge=1)


@dataclass(frozen=True)
class VersionWindow:
    """One version's traffic over an interval: requests it answered (or ran, shadowed), server errors, p99."""

    requests: int = 0
    server_errors: int = 0
    p99_ms: float | None = None

    @property
    def error_ratio(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Agreement:
    compared: int = 0
    agreed: int = 0

    @property
    def ratio(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


Outcome = Literal["pass", "fail", "extend"]


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reasons: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)


def judge(candidate: VersionWindow, stable: VersionWindow, agreement: Agreement, limits: Thresholds) -> Verdict:
    figures = {
        "candidate": {"requests": candidate.requests, "error_ratio": candidate.error_ratio, "p99_ms": candidate.p99_ms},
        "stable": {"requests": stable.requests, "error_ratio": stable.error_ratio, "p99_ms": stable.p99_ms},
        "agreement": agreement.ratio,
        "compared": agreement.compared,
    }
    if candidate.requests < limits.min_requests:
        return Verdict("extend", [f"{candidate.requests} candidate requests, {limits.min_requests} needed"], figures)
    failures = []
    ratio = candidate.error_ratio
    if ratio > limits.max_error_ratio:
        failures.append(f"error ratio {ratio:.2%} above {limits.max_error_ratio:.2%}")
    elif ratio > limits.max_error_ratio / 10 and ratio > limits.error_ratio_vs_stable * stable.error_ratio:
        failures.append(
            f"error ratio {ratio:.2%} above {limits.error_ratio_vs_stable:g}x stable's {stable.error_ratio:.2%}"
        )
    if candidate.p99_ms is not None:
        slower = stable.p99_ms is not None and candidate.p99_ms - stable.p99_ms > limits.p99_slack_ms
        if slower and candidate.p99_ms > limits.max_p99_ratio * stable.p99_ms:
            failures.append(
                f"p99 {candidate.p99_ms:.1f} ms above {limits.max_p99_ratio:g}x stable's {stable.p99_ms:.1f} ms"
            )
        if limits.max_p99_ms is not None and candidate.p99_ms > limits.max_p99_ms:
            failures.append(f"p99 {candidate.p99_ms:.1f} ms above {limits.max_p99_ms:g} ms")
    if agreement.ratio is not None and agreement.ratio < limits.min_agreement:
        failures.append(
            f"outputs agree on {agreement.ratio:.2%} of {agreement.compared} compared, below {limits.min_agreement:.2%}"
        )
    if failures:
        return Verdict("fail", failures, figures)
    if agreement.ratio is None:
        return Verdict("extend", ["no outputs compared yet"], figures)
    return Verdict("pass", [], figures)
