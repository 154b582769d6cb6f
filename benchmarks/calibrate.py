"""`python -m benchmarks calibrate`: what the HTTP path costs, measured against a running server, so that
`plan` charges a measured figure, not an assumed one.

Four runs of one request kind:
1. saturation, closed loop at concurrency 32: throughput X, b rows per engine call and the engine's
   time per call T inside the server (its /stats `compute_infer`, timed in the engine's thread). The
   replica's event loop, which handles every request and every engine call one at a time, is the
   bottleneck there: 1/X = per_request + per_call / b (unless the engine was: then per_request is the
   loop thread's own time a request, from /stats). The engine, in its own thread, shares the CPU with
   that loop (and with the ingress): it ran T / t(b) times slower than the profile t measured alone
   (engine_slowdown). Less so at lower loads: the runs of 4. measure it there too, and `plan`
   interpolates in the rate.
2. small batches, closed loop at concurrency 4: X' at b' rows a call gives the second equation, so
   per_request and per_call separate (the cost of an engine call on the loop: stacking, the hand-off,
   splitting, answering), which is what makes small batches dear. Only where the loop still limits that
   run: if the engine at its profiled speed would have been busy more than half of it, per_call is 0.
3. low load, open loop at a tenth of X: each latency minus the time in the replica is latency added
   outside it (ingress, loopback, client, waking idle threads); its samples, not just a mean, go into
   the simulation so the low-load tail is kept.
4. stalls, open loops at a quarter and at half of X: times the loop could not run at all (the CPU or the
   GIL taken by something else: Ray's own threads and daemons, the ingress, the client). Each shows as a
   burst of requests sent close together that all took far longer than the run's median (and than two
   engine calls at that load); the burst's worst excess over the median is the stall's length. They grow
   with the load (cnn on this 2-core machine: about 1.4 a second of 8.5 ms at a quarter of X, 15.6 ms at
   half), so both runs are kept and `plan` interpolates between them, and extrapolates beyond. They are
   where the tail near capacity comes from: a 20 ms stall at 90% load takes long to drain.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks import machine
from benchmarks.http_load import closed_loop, open_loop
from benchmarks.simulate import profile_service_time

SATURATION_CONCURRENCY = 32
SMALL_BATCH_CONCURRENCY = 4
LOW_LOAD_FRACTION = 0.1
STALL_LOAD_FRACTIONS = (0.25, 0.5)
STALL_GAP_S = 0.02  # requests sent closer than this belong to the same stall


def stalls(scheduled_s: np.ndarray, latencies_ms: np.ndarray, engine_ms: float = 0.0) -> list[float]:
    """Stall lengths (ms) in an open-loop run: bursts of requests, each sent within STALL_GAP_S of the
    last, whose latency is over max(3 x median, median + 5 ms, median + 2 engine calls (`engine_ms` each,
    as long as calls took in that run): waiting for a call or two is queueing, not a stall); a burst's
    length is its worst latency minus the median (the request that came first into a stall waited all
    of it)."""
    median = float(np.median(latencies_ms))
    slow = np.flatnonzero(latencies_ms > max(3 * median, median + 5.0, median + 2 * engine_ms))
    order = slow[np.argsort(scheduled_s[slow])]
    lengths: list[float] = []
    last = -np.inf
    for i in order:
        if scheduled_s[i] - last < STALL_GAP_S and lengths:
            lengths[-1] = max(lengths[-1], float(latencies_ms[i]) - median)
        else:
            lengths.append(float(latencies_ms[i]) - median)
        last = scheduled_s[i]
    return lengths


def model_stats(url: str, model: str) -> dict:
    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as response:
        return json.loads(response.read())["model_stats"][0]


def rows_per_call(before: dict, after: dict) -> float:
    calls = after["execution_count"] - before["execution_count"]
    return (after["inference_count"] - before["inference_count"]) / calls if calls else float("nan")


def _engine_calls(before: dict, after: dict) -> tuple[float, float]:
    """Rows per engine call and the engine's seconds per call between two /stats readings: the engine
    alone, timed in its thread (not the wait for the event loop to take its results back)."""
    calls = after["execution_count"] - before["execution_count"]
    if not calls:
        return float("nan"), float("nan")
    compute_ns = after["inference_stats"]["compute_infer"]["ns"] - before["inference_stats"]["compute_infer"]["ns"]
    return rows_per_call(before, after), compute_ns / calls / 1e9


def _handling(before: dict, after: dict) -> tuple[float, float]:
    """The handler's seconds a request decoding it and encoding its answer (0, 0 from a server that does
    not report them)."""
    b, a = before.get("request_handling"), after.get("request_handling")
    if not b or not a or a["count"] == b["count"]:
        return 0.0, 0.0
    count = a["count"] - b["count"]
    return (a["decode_ns"] - b["decode_ns"]) / count / 1e9, (a["encode_ns"] - b["encode_ns"]) / count / 1e9


def _loop_cpu_per_request(before: dict, after: dict) -> float | None:
    """Seconds a request the replica's event-loop thread ran or waited for a CPU to run on, where the
    server reports them."""
    keys = ("event_loop_cpu_ns", "event_loop_wait_ns")
    if not all(k in before and k in after for k in keys):
        return None
    requests = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    used = sum(after[k] - before[k] for k in keys)
    return used / requests / 1e9 if requests else None


def _closed(url, host, port, model, request, concurrency, window_s):
    """Throughput, rows per engine call, the engine's seconds per call inside the server, the handler's
    decode and encode seconds a request, and the event-loop thread's seconds a request (running or
    waiting for a CPU)."""
    before = model_stats(url, model)
    result = asyncio.run(closed_loop(host, port, request, concurrency, window_s, warmup_s=1.0))
    after = model_stats(url, model)
    if result.statuses.get(200, 0) != result.completed:
        raise RuntimeError(f"calibration: the server answered {result.statuses} at concurrency {concurrency}")
    return (result.rps, *_engine_calls(before, after), *_handling(before, after), _loop_cpu_per_request(before, after))


def calibrate(
    url: str,
    host: str,
    port: int,
    model: str,
    request: bytes,
    batch_seconds: dict[int, float],
    window_s: float = 8.0,
) -> dict:
    engine = profile_service_time(batch_seconds)
    asyncio.run(closed_loop(host, port, request, 4, 1.0, warmup_s=0.5))  # connections and caches warm
    saturated = _closed(url, host, port, model, request, SATURATION_CONCURRENCY, window_s)
    x_high, rows_high, served_call_s, _, _, loop_cpu_s = saturated
    x_low, rows_low, _, decode_s, encode_s, _ = _closed(
        url, host, port, model, request, SMALL_BATCH_CONCURRENCY, window_s
    )
    # The loop's time per request is per_request + per_call / rows_per_call; two runs with different batch
    # sizes give both, when the loop is what limits the second run too. Where the engine is busy most of
    # that run (a heavy model), the run says nothing about the loop, and where the batch sizes do not
    # separate, neither: then it is all per request.
    # Whether the engine, at its own speed (the profile), could have limited that run. Its time inside the
    # server is no guide: it stretches with whatever else holds the CPU.
    engine_busy_low = x_low / rows_low * engine(rows_low, None)
    per_call_s = 0.0
    if rows_low < rows_high * 0.7 and engine_busy_low < 0.5:
        per_call_s = max(0.0, (1 / x_low - 1 / x_high) / (1 / rows_low - 1 / rows_high))
    per_request_s = max(1e-6, 1 / x_high - per_call_s / rows_high)
    # Where the engine, not the loop, limited the saturated run (a heavy model), 1/X says how fast the
    # engine went, not what the loop costs: then the loop thread's own time a request is the better
    # figure (on a CPU, plus waiting for one: on a small machine the engine's threads take the cores).
    engine_busy_high = x_high / rows_high * served_call_s
    loop_from = "throughput"
    if engine_busy_high > 0.8 and loop_cpu_s:
        per_request_s, per_call_s, loop_from = min(per_request_s, loop_cpu_s), 0.0, "event-loop thread"
    slowdown = max(1.0, served_call_s / engine(rows_high, None))
    low_rate = LOW_LOAD_FRACTION * x_high
    low = asyncio.run(open_loop(host, port, request, low_rate, window_s))
    in_replica_s = engine(1, None) + per_request_s + per_call_s
    floor_s = np.clip(low.completed - low.scheduled - in_replica_s, 0.0, None)
    low_summary = low.summary()
    stall_runs = []
    for fraction in STALL_LOAD_FRACTIONS:
        rate = fraction * x_high
        before = model_stats(url, model)
        stalled = asyncio.run(open_loop(host, port, request, rate, 3 * window_s, seed=11))
        after = model_stats(url, model)
        rows, call_s = _engine_calls(before, after)
        ok = stalled.statuses == 200
        # Waiting out an engine call or two at this load is queueing, not a stall.
        lengths = stalls(stalled.scheduled[ok], stalled.latencies_ms[ok], call_s * 1e3)
        span = float(np.ptp(stalled.scheduled)) or 1.0
        stall_runs.append(
            {
                "rate": round(rate, 1),
                "p50_ms": stalled.summary()["p50_ms"],
                "per_s": round(len(lengths) / span, 3),
                "lengths_ms": [round(v, 3) for v in lengths],
                # The engine's own slowdown at this load: less CPU taken by the loop than at saturation.
                "rows_per_engine_call": round(rows, 2),
                "engine_slowdown": round(max(1.0, call_s / engine(rows, None)), 3),
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
            "engine_busy": round(engine_busy_high, 3),
            "event_loop_cpu_ms_per_request": round(loop_cpu_s * 1e3, 4) if loop_cpu_s else None,
        },
        "small_batches": {
            "concurrency": SMALL_BATCH_CONCURRENCY,
            "rps": round(x_low, 1),
            "rows_per_engine_call": round(rows_low, 2),
            "engine_busy": round(engine_busy_low, 3),
            "used": per_call_s > 0,
        },
        "low_load": {"rate": round(low_rate, 1), **{k: low_summary[k] for k in ("p50_ms", "p99_ms", "statuses")}},
        "per_request_ms": round(per_request_s * 1e3, 4),
        "per_request_from": loop_from,
        # Of which the handler's: decoding (a task of its own after the HTTP layer's) and encoding (after
        # the engine call), measured by the server at concurrency 4, where the GIL is least contended.
        "decode_ms": round(min(decode_s, per_request_s) * 1e3, 4),
        "encode_ms": round(min(encode_s, max(0.0, per_request_s - decode_s)) * 1e3, 4),
        "per_call_ms": round(per_call_s * 1e3, 4),
        "engine_slowdown": round(slowdown, 3),
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
