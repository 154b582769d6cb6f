"""Promotion gates, judged before a candidate takes any traffic; a failed gate refuses the rollout with
the figure that failed.

- parity: the candidate's manifest shows parity passed for every engine it carries;
- eval (when the candidate carries an eval set): its score is at least stable's minus the margin its
  manifest declares, both scored on the candidate's eval set (stable's own manifest figure when it was
  scored on the same file, else `stable_score`, computed offline by the engine layer);
- latency budget (when given): the candidate engine's p99 at the serving batch limit, from a
  `trtserve capacity profile` report of that version, within the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from runtime.engine.errors import TrtserveError
from runtime.engine.manifest import Evaluation, Manifest


class GateInputError(TrtserveError, ValueError):
    """A gate asked for with what cannot judge it (e.g. a profile of another version, a stable version that
    could not be scored). A TrtserveError: its message, which may quote a failure to read a repository, is
    scrubbed of credentials when made."""


class _Read(BaseModel):
    """The keys of a report that a gate reads, typed; the report's other keys are not read."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ProfilePoint(_Read):
    sizes: dict[str, int]
    p99_ms: float | None = Field(None, ge=0)


class ProfileReport(_Read):
    """A `trtserve capacity profile` report of one version (runtime/capacity/latency_profile.py measures it)."""

    model: str
    version: int | str
    opt_sizes: dict[str, int]
    points: list[ProfilePoint]


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # one per failed gate, with its figure
    figures: dict = field(default_factory=dict)


def parity_failures(candidate: Manifest) -> list[str]:
    failed = [f"{p.backend} {p.precision}" for p in candidate.parity if not p.passed]
    return [f"parity failed for {', '.join(failed)}"] if failed else []


def stable_score_on_file(candidate: Evaluation, stable: Manifest) -> float | None:
    """Stable's recorded score when it was scored like the candidate on the same eval set, else None."""
    theirs = stable.evaluation
    if theirs is None:
        return None
    same = (theirs.data_sha256, theirs.metric, theirs.output) == (
        candidate.data_sha256,
        candidate.metric,
        candidate.output,
    )
    return theirs.value if same else None


def eval_failures(candidate: Evaluation, stable_score: float) -> list[str]:
    floor = stable_score - candidate.margin
    if candidate.value >= floor:
        return []
    return [
        f"eval {candidate.metric} {candidate.value:.4f} below stable's {stable_score:.4f} "
        f"minus margin {candidate.margin:g} on {candidate.rows} rows"
    ]


def profile_p99_ms(profile: ProfileReport, candidate: Manifest) -> float:
    """The engine p99 at the serving batch limit (other dims at their opt sizes) in a profile report."""
    if profile.model != candidate.name or str(profile.version) != str(candidate.version):
        raise GateInputError(
            f"the profile is of {profile.model!r} version {profile.version!r}, "
            f"not of the candidate {candidate.name} version {candidate.version}"
        )
    limit = candidate.serving.max_batch_size
    for point in profile.points:
        if point.sizes == {**profile.opt_sizes, "batch": limit} and point.p99_ms is not None:
            return point.p99_ms
    raise GateInputError(
        f"the profile has no p99 at the serving batch limit ({limit}); rerun `trtserve capacity profile`"
    )


def latency_failures(p99_ms: float, budget_ms: float, batch: int) -> list[str]:
    if p99_ms <= budget_ms:
        return []
    return [f"engine p99 {p99_ms:.2f} ms at batch {batch} above the latency budget {budget_ms:g} ms"]


def judge_gates(
    candidate: Manifest,
    stable_score: float | None = None,
    profile: ProfileReport | None = None,
    latency_budget_ms: float | None = None,
) -> GateResult:
    """All gates at once; stable_score is needed when the candidate carries an eval set."""
    reasons = parity_failures(candidate)
    figures: dict = {"parity": not reasons}
    if candidate.evaluation is not None:
        if stable_score is None:
            raise GateInputError("the eval gate needs stable's score on the candidate's eval set")
        figures["eval"] = {
            "metric": candidate.evaluation.metric,
            "candidate": candidate.evaluation.value,
            "stable": stable_score,
            "margin": candidate.evaluation.margin,
        }
        reasons += eval_failures(candidate.evaluation, stable_score)
    if latency_budget_ms is not None:
        if profile is None:
            raise GateInputError("a latency budget needs a `trtserve capacity profile` report of the candidate")
        p99 = profile_p99_ms(profile, candidate)
        batch = candidate.serving.max_batch_size
        figures["latency"] = {"p99_ms": p99, "budget_ms": latency_budget_ms, "batch": batch}
        reasons += latency_failures(p99, latency_budget_ms, batch)
    return GateResult(not reasons, reasons, figures)
