"""`trtserve capacity calibrate`: what the HTTP path costs a replica, measured against a running server,
so `plan` simulates measured figures, not assumed ones. Runs of one request kind:

1. saturation, closed loop at concurrency 32: throughput X at b rows per engine call, and the engine's
   time per call T inside the server (its /stats `compute_infer`, timed in the engine's thread). Where
   the replica's event loop, which handles every request and every engine call one at a time, is the
   bottleneck, 1/X = per_request + per_call / b. T over what the profile measured alone at b rows is
   the engine's slowdown inside a loaded replica (it shares the CPU with the loop, the ingress, the
   client).
2. small batches, closed loop at concurrency 4: X' at b' rows a call gives the second equation, so
   per_request and per_call separate (what makes small batches dear); only where the loop still limits
   that run (the engine at its profiled speed busy less than half of it).
3. low load, open loop at a tenth of X: each latency less what the simulator makes of the replica at
   that rate (the loop's and the engine's time, as measured above) is latency added outside the replica
   (ingress, loopback, client), kept as samples so the low-load tail is kept; and the engine's slowdown
   when mostly idle.
4. stalls, open loops at a quarter, half and three quarters of X: times the loop could not run (the CPU
   or the GIL taken by something else: Ray's threads and daemons, the ingress, the client, other tenants
   of a shared machine). Each shows as a burst of requests that all took far longer than the run's
   median, and its length is the answering time the replica lost meanwhile (`stalls`); slow requests
   near an engine-bound model's capacity are its queue, which the simulator reproduces, and answers keep
   coming. `plan` interpolates the stalls in the rate (they grow with the load), and they are where the
   tail near capacity comes from on a small machine.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from runtime.capacity.load_generator import closed_loop, open_loop, settling_s
from runtime.capacity.server_stats import model_stats, rows_per_call, served_batching
from runtime.capacity.simulate import profile_service_time, simulate_replicas
from runtime.diagnostics import machine

SATURATION_CONCURRENCY = 32
SMALL_BATCH_CONCURRENCY = 4
LOW_LOAD_FRACTION = 0.1
STALL_LOAD_FRACTIONS = (0.25, 0.5, 0.75)
STALL_GAP_S = 0.02  # slow requests sent closer than this belong to the same stall


def _stall_threshold_ms(median_ms: float, engine_ms: float) -> float:
    """Beyond what a request takes (the median) and waiting out an engine call or two (`engine_ms` each,
    as long as calls took in that run): that is queueing, not a stall."""
    return max(3 * median_ms, median_ms + 5.0, median_ms + 2 * engine_ms)


def stalls(scheduled_s: np.ndarray, completed_s: np.ndarray, engine_ms: float = 0.0) -> list[float]:
    """Stall lengths (ms) in an open-loop run: the answering time the replica lost. A stall shows first as
    a burst of slow requests (each sent within STALL_GAP_S of the last, latency over the stall
    threshold), but slow requests are not a stall by themselves: near an engine-bound model's capacity
    they are its queue, and answers keep coming at the rate requests arrive. So for the slowest request
    of each burst, its wait less the time the answers that came back meanwhile account for at the run's
    rate (at least the median, what the request takes itself) is what the replica lost. A loss shorter
    than the median is noise in the count of answers."""
    if len(completed_s) < 2:
        return []
    latencies_ms = (completed_s - scheduled_s) * 1e3
    median = float(np.median(latencies_ms))
    rate = (len(scheduled_s) - 1) / float(np.ptp(scheduled_s) or 1.0)
    answered = np.sort(completed_s)
    slow = np.flatnonzero(latencies_ms > _stall_threshold_ms(median, engine_ms))
    bursts: list[int] = []  # the slowest request of each burst
    last = -np.inf
    for i in slow[np.argsort(scheduled_s[slow], kind="stable")]:
        if scheduled_s[i] - last < STALL_GAP_S and bursts:
            bursts[-1] = i if latencies_ms[i] > latencies_ms[bursts[-1]] else bursts[-1]
        else:
            bursts.append(i)
        last = scheduled_s[i]
    lengths = []
    for i in bursts:
        meanwhile = np.searchsorted(answered, completed_s[i]) - np.searchsorted(answered, scheduled_s[i], "right")
        lost = float(latencies_ms[i]) - max(median, meanwhile / rate * 1e3)
        if lost > median:
            lengths.append(lost)
    return lengths


def engine_calls(before: dict, after: dict) -> tuple[float, float]:
    """Rows per engine call and the engine's seconds per call between two /stats readings: the engine
    alone, timed in its thread (not the wait for the event loop to take its results back)."""
    calls = after["execution_count"] - before["execution_count"]
    if not calls:
        return float("nan"), float("nan")
    compute_ns = after["inference_stats"]["compute_infer"]["ns"] - before["inference_stats"]["compute_infer"]["ns"]
    return rows_per_call(before, after), compute_ns / calls / 1e9


def handler_seconds(before: dict, after: dict) -> float | None:
    """Mean seconds a successful request spent in the replica's handler (decoding, queueing, the engine
    call, encoding) between two /stats readings."""
    b, a = before["inference_stats"]["success"], after["inference_stats"]["success"]
    return (a["ns"] - b["ns"]) / (a["count"] - b["count"]) / 1e9 if a["count"] > b["count"] else None


class _Server:
    """The running server under calibration, and its engine's profiled speed."""

    def __init__(self, url: str, model: str, request: bytes, batch_seconds: dict[int, float]) -> None:
        parsed = urlparse(url)
        self.url, self.model, self.request = url, model, request
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.engine = profile_service_time(batch_seconds)

    def slowdown(self, rows: float, call_s: float) -> float:
        return round(max(1.0, call_s / self.engine(rows, None)), 3)

    def closed(self, concurrency: int, window_s: float) -> tuple[float, float, float]:
        """Throughput, rows per engine call, and the engine's seconds per call inside the server."""
        before = model_stats(self.url, self.model)
        result = asyncio.run(closed_loop(self.host, self.port, self.request, concurrency, window_s, warmup_s=1.0))
        after = model_stats(self.url, self.model)
        if result.statuses.get(200, 0) != result.completed:
            raise RuntimeError(f"calibration: the server answered {result.statuses} at concurrency {concurrency}")
        return result.rps, *engine_calls(before, after)

    def open(self, rate: float, window_s: float, seed: int = 0):
        """An open-loop run at `rate` and the /stats readings around it."""
        before = model_stats(self.url, self.model)
        result = asyncio.run(
            open_loop(self.host, self.port, self.request, rate, window_s, seed=seed, warmup_s=settling_s(window_s))
        )
        return result, before, model_stats(self.url, self.model)


def calibrate(url: str, model: str, request: bytes, batch_seconds: dict[int, float], window_s: float = 8.0) -> dict:
    server = _Server(url, model, request, batch_seconds)
    engine = server.engine
    asyncio.run(closed_loop(server.host, server.port, request, 4, 1.0, warmup_s=0.5))  # connections, caches warm
    x_high, rows_high, served_call_s = server.closed(SATURATION_CONCURRENCY, window_s)
    x_low, rows_low, _ = server.closed(SMALL_BATCH_CONCURRENCY, window_s)
    # Whether the engine, at its own speed (the profile), could have limited the small-batch run; its time
    # inside the server is no guide, it stretches with whatever else holds the CPU. Where it could, or
    # where the batch sizes do not separate, the run says nothing of the loop: its cost is all per request.
    engine_busy_low = x_low / rows_low * engine(rows_low, None)
    per_call_s = 0.0
    if rows_low < rows_high * 0.7 and engine_busy_low < 0.5:
        per_call_s = max(0.0, (1 / x_low - 1 / x_high) / (1 / rows_low - 1 / rows_high))
    per_request_s = max(1e-6, 1 / x_high - per_call_s / rows_high)

    low_rate = LOW_LOAD_FRACTION * x_high
    low, before, after = server.open(low_rate, window_s)
    low_rows, low_call_s = engine_calls(before, after)
    low_slowdown = server.slowdown(low_rows, low_call_s)
    low_handler_s = handler_seconds(before, after)
    # Latency outside the replica: each low-load latency less the replica's mean latency at that rate as
    # the simulator makes it from these figures, so what the simulation adds to them is exactly what it
    # does not model.
    max_batch_size, delay_ms = served_batching(url, model)
    inside = simulate_replicas(
        low_rate,
        lambda rows, rng: engine(rows, rng) * low_slowdown,
        per_request_s,
        max_batch_size,
        delay_ms / 1e3,
        requests=5000,
        call_s=per_call_s,
    )
    floor_s = np.clip(low.completed - low.scheduled - inside.mean_s, 0.0, None)
    low_summary = low.summary()

    stall_runs = []
    for fraction in STALL_LOAD_FRACTIONS:
        rate = fraction * x_high
        result, before, after = server.open(rate, 3 * window_s, seed=11)
        rows, call_s = engine_calls(before, after)
        ok = result.statuses == 200
        lengths = stalls(result.scheduled[ok], result.completed[ok], call_s * 1e3)
        span = float(np.ptp(result.scheduled)) or 1.0
        summary = result.summary()
        stall_runs.append(
            {
                "rate": round(rate, 1),
                "p50_ms": summary["p50_ms"],
                "p99_ms": summary["p99_ms"],
                "per_s": round(len(lengths) / span, 3),
                "span_s": round(span, 3),
                "lengths_ms": [round(v, 3) for v in lengths],
                "rows_per_engine_call": round(rows, 2),
                "engine_slowdown": server.slowdown(rows, call_s),
            }
        )
    return {
        "benchmark": "calibrate",
        "model": model,
        "url": url,
        "machine": machine.describe(),
        "saturation": {
            "concurrency": SATURATION_CONCURRENCY,
            "rps": round(x_high, 1),
            "rows_per_engine_call": round(rows_high, 2),
            "engine_ms_per_call_profiled": round(engine(rows_high, None) * 1e3, 4),
            "engine_ms_per_call_served": round(served_call_s * 1e3, 4),
            "engine_busy": round(x_high / rows_high * served_call_s, 3),
        },
        "small_batches": {
            "concurrency": SMALL_BATCH_CONCURRENCY,
            "rps": round(x_low, 1),
            "rows_per_engine_call": round(rows_low, 2),
            "engine_busy": round(engine_busy_low, 3),
            "used": per_call_s > 0,
        },
        "low_load": {
            "rate": round(low_rate, 1),
            **{k: low_summary[k] for k in ("p50_ms", "p99_ms", "statuses")},
            "handler_ms": round((low_handler_s or float("nan")) * 1e3, 4),  # /stats, for the record
            "inside_replica_ms": round(inside.mean_s * 1e3, 4),  # simulated, subtracted from the floor
            "rows_per_engine_call": round(low_rows, 2),
            "engine_slowdown": low_slowdown,
        },
        "per_request_ms": round(per_request_s * 1e3, 4),
        "per_call_ms": round(per_call_s * 1e3, 4),
        "engine_slowdown": server.slowdown(rows_high, served_call_s),
        "floor_p50_ms": round(float(np.median(floor_s)) * 1e3, 3),
        "floor_p99_ms": round(float(np.percentile(floor_s, 99)) * 1e3, 3),
        "floor_samples_ms": [round(float(v) * 1e3, 4) for v in floor_s],
        "stalls": stall_runs,
    }


def write(report: dict, results: Path) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"http-{report['model']}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path
