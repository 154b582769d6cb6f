"""`python -m benchmarks plan`: the cheapest replica count and batch limit that meet a p99 SLO at a
request rate, predicted by simulating the batcher on a measured profile (benchmarks.simulate).

Replicas are simulated as independent (each with its own cores or GPU); on one small machine they share
the CPU, which the simulation does not model."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.simulate import profile_service_time, simulate


@dataclass
class Candidate:
    replicas: int
    max_batch_size: int
    max_rps: float  # highest rate whose simulated p99 meets the SLO
    p99_ms_at_rate: float

    def to_dict(self) -> dict:
        return {
            "replicas": self.replicas,
            "max_batch_size": self.max_batch_size,
            "max_rps": round(self.max_rps, 1),
            "p99_ms_at_rate": round(self.p99_ms_at_rate, 3),
        }


def _p99_ms(rate, service, batch, replicas, overhead_s, requests) -> float:
    return simulate(rate, service, batch, replicas, requests=requests, overhead_s=overhead_s).percentile_ms(99)


def max_sustainable_rate(service, batch, replicas, slo_ms, overhead_s, requests=5000, iterations=12) -> float:
    """Bisection on the rate: the largest whose p99 stays within the SLO."""
    capacity = replicas * batch / service(batch, None)  # the engine's ceiling at full batches
    low, high = 0.0, capacity
    for _ in range(iterations):
        middle = (low + high) / 2
        if _p99_ms(middle, service, batch, replicas, overhead_s, requests) <= slo_ms:
            low = middle
        else:
            high = middle
    return low


def plan(
    batch_seconds: dict[int, float],
    rate: float,
    slo_p99_ms: float,
    http_overhead_ms: float,
    max_replicas: int = 4,
    requests: int = 5000,
) -> dict:
    engine = profile_service_time(batch_seconds)
    per_request_s = http_overhead_ms / 1e3

    # The HTTP path (parsing, encoding, the ingress) runs on the replica's CPU for every request, so it
    # is part of what a replica spends per batch, not just added latency.
    def service(rows: int, rng) -> float:
        return engine(rows, rng) + rows * per_request_s

    overhead_s = 0.0
    candidates = []
    for replicas in range(1, max_replicas + 1):
        for batch in sorted(batch_seconds):
            max_rps = max_sustainable_rate(service, batch, replicas, slo_p99_ms, overhead_s, requests)
            p99 = (
                _p99_ms(rate, service, batch, replicas, overhead_s, requests) if rate < max_rps * 1.5 else float("inf")
            )
            candidates.append(Candidate(replicas, batch, max_rps, p99))
    meeting = [c for c in candidates if c.max_rps >= rate and c.p99_ms_at_rate <= slo_p99_ms]
    best = min(meeting, key=lambda c: (c.replicas, c.p99_ms_at_rate)) if meeting else None
    curve = []
    if best:
        for fraction in (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0):
            r = best.max_rps * fraction
            curve.append(
                {
                    "rps": round(r, 1),
                    "p99_ms": round(_p99_ms(r, service, best.max_batch_size, best.replicas, overhead_s, requests), 3),
                }
            )
    return {
        "rate": rate,
        "slo_p99_ms": slo_p99_ms,
        "http_overhead_ms": http_overhead_ms,
        "plan": best.to_dict() if best else None,
        "curve": curve,
        "candidates": [c.to_dict() for c in candidates],
    }
