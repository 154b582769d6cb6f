"""`trtserve capacity plan`: the cheapest replica count and batch limit that meet a p99 SLO at a
request rate, predicted by simulating the batcher (runtime.capacity.simulate) on two measurements:

- the engine's profile (`trtserve capacity profile`): seconds per engine call at each batch size;
- the server path (`trtserve capacity calibrate`): the replica's event-loop time per request (HTTP, decoding,
  encoding) and per engine call, how much slower the engine runs inside the replica than alone (from
  the server's own /stats, saturated and lightly loaded), and the latency added outside the replica
  (ingress, loopback, client) as measured samples, and the event loop's stalls at three loads.

The simulation is `runtime.capacity.simulate.simulate_replicas`: the event loop's tasks in order (decoding,
engine-call hand-off and hand-back), the batcher's rule (including max_queue_delay), the engine, stalls.
Replicas are simulated as independent (each with its own cores or GPU); on one small machine they share
the CPU, which is not modelled, so plans for this machine are made for one replica.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.capacity.simulate import SimResult, profile_service_time, simulate_replicas

SIM_REQUESTS = 20_000
LOAD_FRACTION = 0.7  # validate compares p99 at this fraction of the max sustainable rate


@dataclass
class HttpPath:
    """What the server path costs a replica, as `calibrate` measured it."""

    per_request_s: float  # the replica's event-loop time per request
    floor_s: np.ndarray = field(default_factory=lambda: np.zeros(1))  # latency samples outside the replica
    per_call_s: float = 0.0  # the replica's event-loop time per engine call
    engine_slowdown: float = 1.0  # engine time in a saturated replica / engine time alone
    # The slowdown measured at other rates: (rate, slowdown); interpolated with the saturated one.
    slowdowns: list[tuple[float, float]] = field(default_factory=list)
    # When the replica's event loop could not run at all, measured at some rates: (rate, stalls a second,
    # stall lengths in seconds), as `calibrate` found them.
    stalls: list[tuple[float, float, np.ndarray]] = field(default_factory=list)

    def slowdown_at(self, rate: float | None) -> float:
        """The engine's slowdown at `rate`, interpolated between the rates it was measured at (the nearest
        beyond them); engine_slowdown (saturation) where nothing else is known."""
        if rate is None or not self.slowdowns:
            return self.engine_slowdown
        points = sorted(self.slowdowns)
        return float(np.interp(rate, [r for r, _ in points], [s for _, s in points]))

    def stalls_at(self, rate: float) -> tuple[float, np.ndarray]:
        """Stalls a second and their lengths at `rate`. The runs that measured them are interpolated
        piecewise linearly in the rate, and extrapolated linearly beyond the outer two (never below
        zero): the share of time the loop was stalled (0 in a run that found none), and the mean stall
        length (over the runs that found some); the lengths are the nearest such run's, scaled to that
        mean. (Stalls get longer with load and merge, so their count is derived: share / mean length.)"""
        runs = sorted(self.stalls, key=lambda s: s[0])
        found = [run for run in runs if len(run[2])]
        if not found:
            return 0.0, np.zeros(0)
        if len({r for r, _, _ in runs}) == 1:
            return max(runs, key=lambda s: len(s[2]))[1:]
        shares = [f * float(lengths.mean()) if len(lengths) else 0.0 for _, f, lengths in runs]
        share = max(0.0, _piecewise_linear(rate, [r for r, _, _ in runs], shares))
        means = [float(lengths.mean()) for _, _, lengths in found]
        mean = max(1e-6, _piecewise_linear(rate, [r for r, _, _ in found], means))
        nearest = min(found, key=lambda s: abs(rate - s[0]))[2]
        return share / mean, nearest * (mean / float(nearest.mean()))

    @classmethod
    def read(cls, path: Path) -> HttpPath:
        return cls.from_report(json.loads(Path(path).read_text()))

    @classmethod
    def from_report(cls, doc: dict) -> HttpPath:
        runs = doc.get("stalls") or []
        measured = [{"rate": doc["saturation"]["rps"], "engine_slowdown": doc["engine_slowdown"]}]
        measured += [doc.get("low_load") or {}, *runs]
        slowdowns = [
            (r["rate"], r["engine_slowdown"]) for r in measured if np.isfinite(r.get("engine_slowdown", np.nan))
        ]
        return cls(
            per_request_s=doc["per_request_ms"] / 1e3,
            floor_s=np.array(doc["floor_samples_ms"]) / 1e3,
            per_call_s=doc.get("per_call_ms", 0.0) / 1e3,
            engine_slowdown=doc["engine_slowdown"],
            slowdowns=slowdowns,
            stalls=[(r["rate"], r["per_s"], np.array(r["lengths_ms"]) / 1e3) for r in runs],
        )

    @classmethod
    def fixed(cls, per_request_ms: float) -> HttpPath:
        """A per-request cost given by hand (what-if planning); no latency outside the queue."""
        return cls(per_request_ms / 1e3)


def _piecewise_linear(x: float, xs: list[float], ys: list[float]) -> float:
    """Linear interpolation through (xs, ys) (xs increasing), extended beyond the ends along the outer
    segments; constant where there is one point."""
    if len(xs) == 1:
        return ys[0]
    if x < xs[0]:
        i = 0
    elif x > xs[-1]:
        i = len(xs) - 2
    else:
        return float(np.interp(x, xs, ys))
    return ys[i] + (x - xs[i]) * (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])


@dataclass
class Candidate:
    replicas: int
    max_batch_size: int
    max_queue_delay_ms: float
    max_rps: float  # highest rate whose simulated p99 meets the SLO
    p99_ms_at_rate: float

    def to_dict(self) -> dict:
        return {
            "replicas": self.replicas,
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_ms": self.max_queue_delay_ms,
            "max_rps": round(self.max_rps, 1),
            "p99_ms_at_rate": round(self.p99_ms_at_rate, 3),
        }


@dataclass
class Replica:
    """What one replica configuration costs, for the simulator."""

    batch_seconds: dict[int, float]
    http: HttpPath
    max_batch_size: int
    max_queue_delay_ms: float
    replicas: int = 1
    # Independent runs pooled for each rate: stalls are rare events, and one run's p99 near capacity moves
    # with the few it happens to draw (enough to turn a bisection around).
    seeds: int = 1

    def engine(self, rate: float | None = None):
        """Engine seconds a call inside the replica at `rate` (a replica's share); at saturation if None."""
        profiled = profile_service_time(self.batch_seconds)
        slowdown = self.http.slowdown_at(rate)
        return lambda rows, rng: profiled(rows, rng) * slowdown

    def simulate(self, rate: float, requests: int = SIM_REQUESTS, seed: int = 0) -> SimResult:
        runs = [self._simulate_once(rate, requests, seed + k) for k in range(self.seeds)]
        return runs[0] if len(runs) == 1 else SimResult.pooled(runs)

    def _simulate_once(self, rate: float, requests: int, seed: int) -> SimResult:
        stalls_per_s, stall_s = self.http.stalls_at(rate / self.replicas)
        return simulate_replicas(
            rate,
            self.engine(rate / self.replicas),
            self.http.per_request_s,
            self.max_batch_size,
            self.max_queue_delay_ms / 1e3,
            self.replicas,
            requests=requests,
            overhead_s=self.http.floor_s,
            seed=seed,
            call_s=self.http.per_call_s,
            stall_rate=stalls_per_s,
            stall_s=stall_s,
        )

    def capacity(self) -> float:
        """Requests/s at full batches: the slower of the event loop and the engine."""
        engine = self.max_batch_size / self.engine()(self.max_batch_size, None)
        loop_s = self.http.per_request_s + self.http.per_call_s / self.max_batch_size
        loop = 1.0 / loop_s if loop_s else float("inf")
        return self.replicas * min(engine, loop)

    def p99_ms(self, rate: float, requests: int = SIM_REQUESTS) -> float:
        return self.simulate(rate, requests).percentile_ms(99)

    def max_sustainable_rate(self, slo_ms: float, requests: int = SIM_REQUESTS, iterations: int = 10) -> float:
        """Bisection on the rate: the largest whose simulated p99 stays within the SLO."""
        low, high = 0.0, self.capacity()
        for _ in range(iterations):
            middle = (low + high) / 2
            if self.p99_ms(middle, requests) <= slo_ms:
                low = middle
            else:
                high = middle
        return low

    def curve(self, max_rps: float, fractions=(0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1)) -> list[dict]:
        return [{"rps": round(max_rps * f, 1), "p99_ms": round(self.p99_ms(max_rps * f), 3)} for f in fractions]


def plan(
    batch_seconds: dict[int, float],
    rate: float,
    slo_p99_ms: float,
    http: HttpPath,
    max_replicas: int = 4,
    delays_ms: tuple[float, ...] = (0.0, 2.0, 5.0),
    requests: int = SIM_REQUESTS,
) -> dict:
    candidates = []
    for replicas in range(1, max_replicas + 1):
        for batch in sorted(batch_seconds):
            for delay in delays_ms:
                replica = Replica(batch_seconds, http, batch, delay, replicas)
                max_rps = replica.max_sustainable_rate(slo_p99_ms, requests)
                p99 = replica.p99_ms(rate, requests) if rate < max_rps * 1.5 else float("inf")
                candidates.append(Candidate(replicas, batch, delay, max_rps, p99))
    meeting = [c for c in candidates if c.max_rps >= rate and c.p99_ms_at_rate <= slo_p99_ms]
    best = min(meeting, key=lambda c: (c.replicas, c.p99_ms_at_rate)) if meeting else None
    chosen = Replica(batch_seconds, http, best.max_batch_size, best.max_queue_delay_ms, best.replicas) if best else None
    return {
        "rate": rate,
        "slo_p99_ms": slo_p99_ms,
        "http_per_request_ms": round(http.per_request_s * 1e3, 4),
        "http_floor_p50_ms": round(float(np.median(http.floor_s)) * 1e3, 3),
        "engine_slowdown": round(http.engine_slowdown, 3),
        "plan": best.to_dict() if best else None,
        "curve": chosen.curve(best.max_rps) if best else [],
        "candidates": [c.to_dict() for c in candidates],
    }


def predict(replica: Replica, slo_p99_ms: float) -> dict:
    """For one replica configuration: the max sustainable rate within the SLO, the p99 at LOAD_FRACTION of
    it, and the rate-vs-p99 curve (what `validate` measures)."""
    max_rps = replica.max_sustainable_rate(slo_p99_ms)
    if max_rps <= 0:  # not even the lowest rate tried stays within the SLO: nothing to predict at 70% of it
        return {"max_rps": 0.0, "p99_ms": None, "at_rps": 0.0, "curve": []}
    return {
        "max_rps": round(max_rps, 1),
        "p99_ms": round(replica.p99_ms(max_rps * LOAD_FRACTION), 3),
        "at_rps": round(max_rps * LOAD_FRACTION, 1),
        "curve": replica.curve(max_rps),
    }
