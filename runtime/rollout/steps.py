"""A rollout's state and how it moves: steps judged one analysis interval at a time, pause and resume,
promotion, automatic rollback after `failure_limit` failed intervals in a row, and rollback after
promotion while the previous version is still kept warm.

The whole state is one pydantic object, so it can live where Ray Serve persists configuration and be
resumed by whichever process holds it next; every transition returns a new object with the transition
appended to its history.
"""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.engine.errors import TrtserveError
from runtime.engine.schema import invalid
from runtime.rollout.analysis import Agreement, Thresholds, Verdict, VersionWindow, judge
from runtime.rollout.routing import Routing, Strategy

State = Literal["progressing", "paused", "promoted", "rolled_back", "refused"]
ENDED = ("promoted", "rolled_back", "refused")


class RolloutError(TrtserveError):
    """A rollout command that cannot be carried out in the rollout's state; the message says why."""

    exit_code = 2


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RolloutOptions(_Record):
    """How a rollout moves: what `trtserve rollout start` may choose (runtime.rollout.commands)."""

    strategy: Strategy = "canary"
    steps: list[float] = Field(default_factory=lambda: [10.0, 50.0, 100.0], min_length=1, max_length=100)
    interval_s: float = Field(30.0, gt=0)
    failure_limit: int = Field(2, ge=1)
    shadow_percent: float = Field(100.0, gt=0, le=100)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in steps) or any(b <= a for a, b in itertools.pairwise(steps)):
            raise invalid(f"expected percents increasing within (0, 100], got {steps}")
        return steps


class RolloutSpec(RolloutOptions):
    model: str
    stable: str
    candidate: str
    keep_previous_s: float = Field(1800.0, ge=0)
    thresholds: Thresholds = Field(default_factory=Thresholds)

    @model_validator(mode="after")
    def _two_versions(self) -> RolloutSpec:
        if self.stable == self.candidate:
            raise invalid(f"version {self.candidate} is already stable", key="candidate")
        return self


class Event(_Record):
    at: float  # unix time
    state: State
    by: str  # "analysis", or who asked (e.g. "cli")
    reason: str = ""
    figures: dict = Field(default_factory=dict)


class Rollout(_Record):
    spec: RolloutSpec
    state: State = "progressing"
    step: int = 0  # index into spec.steps: the step being judged
    failures: int = 0  # failed intervals in a row
    reason: str = ""
    interval_started: float
    previous: str | None = None  # after promotion: the old stable, kept warm until previous_until
    previous_until: float | None = None
    reference: VersionWindow | None = None  # stable's figures from the last interval it answered itself
    intervals: list[dict] = Field(default_factory=list)  # each judged interval's outcome and figures
    history: list[Event] = Field(default_factory=list)

    @classmethod
    def begin(cls, spec: RolloutSpec, now: float, by: str = "cli", figures: dict | None = None) -> Rollout:
        """Started, with the gates' figures (the candidate passed them) in its first event."""
        reason = f"{spec.strategy} to version {spec.candidate}"
        event = Event(at=now, state="progressing", by=by, reason=reason, figures=figures or {})
        return cls(spec=spec, interval_started=now, history=[event])

    @classmethod
    def refuse(
        cls, spec: RolloutSpec, now: float, reason: str, by: str = "gate", figures: dict | None = None
    ) -> Rollout:
        event = Event(at=now, state="refused", by=by, reason=reason, figures=figures or {})
        return cls(spec=spec, state="refused", reason=reason, interval_started=now, history=[event])

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def weight(self) -> float:
        """The percent of requests the candidate answers now."""
        if self.state == "promoted":
            return 100.0
        if self.state in ("rolled_back", "refused") or self.spec.strategy != "canary":
            return 0.0
        return self.spec.steps[self.step]

    def routing(self) -> Routing:
        spec = self.spec
        if self.state == "promoted":
            return Routing(spec.candidate)
        if self.state in ("rolled_back", "refused"):
            return Routing(self.previous if self.previous else spec.stable)
        if spec.strategy == "canary":
            return Routing(spec.stable, spec.candidate, weight=self.weight)
        # shadow, and blue-green before its switch: judged on shadowed traffic, answered by stable
        return Routing(spec.stable, spec.candidate, shadow_percent=spec.shadow_percent)

    def loaded(self, now: float) -> set[str]:
        """The versions that must stay loaded: both during a rollout, the candidate after a rollback (for
        inspection), the previous stable after a promotion until keep_previous_s has passed."""
        spec = self.spec
        if self.state == "promoted":
            keep = self.previous_until is not None and now < self.previous_until
            return {spec.candidate, spec.stable} if keep else {spec.candidate}
        return {spec.stable, spec.candidate}

    def due(self, now: float) -> bool:
        return self.state == "progressing" and now - self.interval_started >= self.spec.interval_s

    def judge(self, candidate: VersionWindow, stable: VersionWindow, agreement: Agreement, now: float) -> Rollout:
        """Judge the interval that began at interval_started with these figures, and move accordingly."""
        if self.state != "progressing":
            raise RolloutError(f"{self.spec.model}: the rollout is {self.state}; only a progressing one is judged")
        stable_answers = self.weight < 100
        reference = stable if stable_answers or self.reference is None else self.reference
        verdict = judge(candidate, reference, agreement, self.spec.thresholds)
        intervals = list(self.intervals)
        last = intervals[-1] if intervals else None
        if last is not None and last["outcome"] == "extend" and last["started"] == self.interval_started:
            intervals.pop()  # the same interval judged again: one record per interval, whatever its length
        update: dict = {"intervals": [*intervals, _interval(self, verdict, now)]}
        if stable_answers and stable.requests:
            update["reference"] = stable
        if verdict.outcome == "extend":
            return self.model_copy(update=update)  # the same interval goes on: more traffic, then judged again
        update["interval_started"] = now
        if verdict.outcome == "fail":
            failures = self.failures + 1
            if failures >= self.spec.failure_limit:
                reason = f"{failures} failed intervals in a row: " + "; ".join(verdict.reasons)
                return self._moved("rolled_back", now, "analysis", reason, verdict.figures, failures=failures, **update)
            return self.model_copy(update={**update, "failures": failures})
        if self.step + 1 >= len(self.spec.steps):
            return self._promoted(now, "analysis", f"passed {len(self.spec.steps)} intervals", verdict.figures, update)
        return self.model_copy(update={**update, "failures": 0, "step": self.step + 1})

    def pause(self, now: float, by: str = "cli") -> Rollout:
        self._expect("progressing", "pause")
        return self._moved("paused", now, by, "paused")

    def resume(self, now: float, by: str = "cli") -> Rollout:
        self._expect("paused", "resume")
        return self._moved("progressing", now, by, "resumed", interval_started=now)

    def promote(self, now: float, by: str = "cli") -> Rollout:
        self._expect(("progressing", "paused"), "promote")
        return self._promoted(now, by, "promoted by hand", {}, {})

    def rollback(self, now: float, reason: str = "rolled back by hand", by: str = "cli") -> Rollout:
        """All traffic to stable at once; after a promotion, back to the previous version while it is kept."""
        if self.state == "promoted":
            if self.previous_until is None or now >= self.previous_until:
                raise RolloutError(
                    f"{self.spec.model}: version {self.spec.stable} is no longer kept warm "
                    f"(keep_previous_s={self.spec.keep_previous_s:g}); start a rollout to it instead"
                )
            return self._moved("rolled_back", now, by, reason, previous=self.spec.stable)
        self._expect(("progressing", "paused"), "roll back")
        return self._moved("rolled_back", now, by, reason)

    def _promoted(self, now: float, by: str, reason: str, figures: dict, update: dict) -> Rollout:
        until = now + self.spec.keep_previous_s
        return self._moved(
            "promoted", now, by, reason, figures, previous=self.spec.stable, previous_until=until, **update
        )

    def _moved(self, state: State, now: float, by: str, reason: str, figures: dict | None = None, **update) -> Rollout:
        event = Event(at=now, state=state, by=by, reason=reason, figures=figures or {})
        history = [*self.history, event]
        return self.model_copy(update={**update, "state": state, "reason": reason, "history": history})

    def _expect(self, states: str | tuple[str, ...], action: str) -> None:
        states = (states,) if isinstance(states, str) else states
        if self.state not in states:
            raise RolloutError(f"{self.spec.model}: cannot {action} a rollout that is {self.state}")


def _interval(rollout: Rollout, verdict: Verdict, now: float) -> dict:
    return {
        "started": rollout.interval_started,
        "judged": now,
        "step": rollout.step,
        "weight": rollout.weight,
        "outcome": verdict.outcome,
        "reasons": verdict.reasons,
        **verdict.figures,
    }
