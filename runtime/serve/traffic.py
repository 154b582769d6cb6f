"""A replica's part in a rollout: which loaded version of a model answers each request (the routing the
decision-maker set, runtime.rollout.routing), the requests that also run on a second version after the
answer is sent, what each version answered, and how often the two versions agreed.

Only what the routing sent a version is its rollout's evidence (runtime.rollout.intervals reads `ran`):
a request pinned to a version (`/versions/{v}/infer`) is counted apart, under `pinned_answered` and
`pinned_ran`, and never mirrored, so a client choosing the version cannot steer the rollout's verdict.

Mirrored runs (shadowed requests on the candidate, canaried ones on stable) never delay an answer: they
start after it, gathered for a few milliseconds so they share engine calls, off the event loop, and at
most `max_mirrored` are gathered or running at once per replica; beyond that, or when the other
version's queue is full, they are dropped and counted, so a candidate that falls behind cannot slow the
stable path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import numpy as np

from runtime.rollout.agreement import AgreementCounter, Tolerance, tolerances
from runtime.rollout.routing import Route, Routing
from runtime.rollout.version_counts import VersionCounts
from runtime.serve.dynamic_batcher import Overloaded
from runtime.serve.model import ServedModel

log = logging.getLogger("trtserve.server")

ANSWERED, RAN = "answered", "ran"  # what the client got; the model's own work, answered or mirrored
PINNED = "pinned_"  # the prefix of both roles for requests that named their version


class Traffic:
    def __init__(self, max_mirrored: int = 64, mirror_delay_s: float = 0.02, routing_key: bytes = b"") -> None:
        # The secret a request's key is hashed with to route it (the application's, the same on every
        # replica): still sticky, but a client cannot pick ids that land on the candidate.
        self.routing_key = routing_key
        self.routing: dict[str, Routing] = {}
        self.counts: dict[tuple[str, str, str], VersionCounts] = {}  # (model, version, [pinned_]answered|ran)
        self.agreement: dict[tuple[str, str, str], AgreementCounter] = {}  # (model, stable, candidate)
        self.dropped: dict[str, int] = {}  # model -> mirrored runs dropped
        self.max_mirrored = max_mirrored  # mirrored requests gathered or running at once, per replica
        self.mirror_delay_s = mirror_delay_s
        self._mirroring = 0
        self._pending: dict[tuple[str, str, str], list] = {}  # (model, answered, other) -> (feed, outputs)
        self._running: set[asyncio.Task] = set()
        self._tolerances: dict[tuple[str, str, str], dict[str, Tolerance]] = {}

    def set_routing(self, model: str, routing: Routing) -> None:
        self.routing[model] = routing

    def route(
        self, name: str, versions: Mapping[str, ServedModel], key: str | None, pinned: str | None = None
    ) -> tuple[ServedModel, Route]:
        """The version that answers and the route it came from. A pinned version must be loaded
        (LookupError otherwise) and is never mirrored; a routed one that is not loaded (yet) falls back to
        stable, then the latest."""
        if pinned is not None:
            if pinned not in versions:
                raise LookupError(f"model {name!r} has no version {pinned!r}; serving {', '.join(sorted(versions))}")
            return versions[pinned], Route(pinned)
        routing = self.routing.get(name)
        if routing is None or routing.stable not in versions:
            serving = self.serving(name, versions)
            return serving, Route(serving.version)
        route = routing.route(key, secret=self.routing_key)
        if route.answer not in versions:
            route = Route(routing.stable)
        if route.mirror is not None and route.mirror not in versions:
            route = Route(route.answer)
        return versions[route.answer], route

    def serving(self, name: str, versions: Mapping[str, ServedModel]) -> ServedModel:
        """The version answering for the model as a whole: stable while it is loaded, else the latest."""
        routing = self.routing.get(name)
        if routing is not None and routing.stable in versions:
            return versions[routing.stable]
        return versions[max(versions, key=int)]

    def role(self, model: ServedModel) -> str:
        """canary for a rollout's candidate answering, else stable."""
        routing = self.routing.get(model.name)
        return "canary" if routing is not None and routing.candidate == model.version else "stable"

    def answered(self, model: ServedModel, status: int, seconds: float, pinned: bool = False) -> None:
        """A response to a client, as it saw it (the handler's whole time); `pinned`: the client named the
        version, so the routing had no say."""
        self._counts(model, PINNED + ANSWERED if pinned else ANSWERED).observe(status, seconds * 1e3)

    def ran(self, model: ServedModel, status: int, seconds: float, pinned: bool = False) -> None:
        """One run of the model: the engine call that computed it (the elapsed time for a failure). What a
        rollout compares, measured alike for answered and mirrored runs: a mirrored run waits behind the
        next requests, an answered one does not, so time in queues would say more about the mirroring
        than about the version. A `pinned` run is counted apart and never compared."""
        self._counts(model, PINNED + RAN if pinned else RAN).observe(status, seconds * 1e3)

    def mirror(
        self,
        answered: ServedModel,
        other: ServedModel,
        feed: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> None:
        """Run `feed` on `other` in the background and compare its outputs with the ones just answered.
        Mirrored requests are gathered for `mirror_delay_s` and queued together (nobody waits for them),
        so they share engine calls and cost the event loop one task per gathering, not one per request."""
        if self._mirroring >= self.max_mirrored or not other.ready:
            self.dropped[answered.name] = self.dropped.get(answered.name, 0) + 1
            return
        key = (answered.name, answered.version, other.version)
        pending = self._pending.setdefault(key, [])
        pending.append((feed, outputs))
        self._mirroring += 1
        if len(pending) >= other.max_batch_size:  # a full engine call's worth: no reason to wait
            self._start(self._run(self._pending.pop(key), answered, other))
        elif len(pending) == 1:
            self._start(self._run_later(key, answered, other))

    def _start(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run_later(self, key: tuple[str, str, str], answered: ServedModel, other: ServedModel) -> None:
        await asyncio.sleep(self.mirror_delay_s)
        batch = self._pending.pop(key, None)
        if batch:
            await self._run(batch, answered, other)

    async def _run(self, batch: list, answered: ServedModel, other: ServedModel) -> None:
        try:
            futures = []
            for feed, _ in batch:
                try:
                    futures.append(other.batcher.enqueue_background(feed, other.work_of(feed)))
                except Overloaded:  # the other version is behind: drop, do not queue more work on it
                    futures.append(None)
            results = iter(await asyncio.gather(*(f for f in futures if f is not None), return_exceptions=True))
            compared = []
            for (_, outputs), future in zip(batch, futures, strict=True):
                result = None if future is None else next(results)
                if result is None or isinstance(result, asyncio.CancelledError):  # queue full, or closing
                    self.dropped[answered.name] = self.dropped.get(answered.name, 0) + 1
                elif isinstance(result, BaseException):
                    log.error("mirrored run on %s failed: %s: %s", other.label, type(result).__name__, result)
                    self.ran(other, 500, 0.0)
                else:
                    theirs, timing = result
                    self.ran(other, 200, timing.get("compute_s", 0.0))
                    compared.append((outputs, theirs))
            self._compare(answered, other, compared)
        finally:
            self._mirroring -= len(batch)

    def _compare(self, answered: ServedModel, other: ServedModel, compared: list) -> None:
        """Count the agreement of (answered outputs, other's outputs) pairs, stable's first."""
        routing = self.routing.get(answered.name)
        if not compared or routing is None or routing.candidate is None:
            return
        answered_is_stable = answered.version == routing.stable
        stable, candidate = (answered, other) if answered_is_stable else (other, answered)
        pairs = compared if answered_is_stable else [(theirs, ours) for ours, theirs in compared]
        key = (answered.name, stable.version, candidate.version)
        limits = self._tolerances.get(key)
        if limits is None:
            limits = self._tolerances[key] = tolerances(
                stable.manifest,
                (stable.engine.backend, stable.engine.precision),
                candidate.manifest,
                (candidate.engine.backend, candidate.engine.precision),
            )
        self.agreement.setdefault(key, AgreementCounter()).add_many(pairs, limits)

    def _counts(self, model: ServedModel, role: str) -> VersionCounts:
        return self.counts.setdefault((model.name, model.version, role), VersionCounts())

    async def drain(self) -> None:
        """Wait for the mirrored runs in flight (tests; a replica shutting down)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    def report(self, name: str) -> dict:
        """This replica's cumulative counts for model `name`, for the decision-maker to add up."""
        routing = self.routing.get(name)
        return {
            "routing": None if routing is None else routing.__dict__,
            "counts": {f"{v}/{role}": c.to_json() for (m, v, role), c in self.counts.items() if m == name},
            "agreement": {f"{s}/{c}": a.to_dict() for (m, s, c), a in self.agreement.items() if m == name},
            "dropped": self.dropped.get(name, 0),
        }
