"""`python -m benchmarks calibrate`: what the HTTP path costs, measured against a running server, so that
`plan` charges a measured figure, not an assumed one.

Two runs of one request kind:
1. saturation, closed loop at high concurrency: throughput X, b rows per engine call and the engine's
   time per call T inside the server (its /stats). The replica's event loop, which handles every request
   one at a time, is the bottleneck there, so it spends per_request = 1/X on each. The engine, in its own
   thread, shares the CPU with that loop (and with the ingress): it ran T / t(b) times slower than the
   profile t measured alone (engine_slowdown).
2. low load, open loop at a tenth of X: each latency minus the time in the replica
   (per_request + t(1)) is latency added outside it (ingress, loopback, client, waking idle threads);
   its samples, not just a mean, go into the simulation so the low-load tail is kept.
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
LOW_LOAD_FRACTION = 0.1


def model_stats(url: str, model: str) -> dict:
    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as response:
        return json.loads(response.read())["model_stats"][0]


def rows_per_call(before: dict, after: dict) -> float:
    calls = after["execution_count"] - before["execution_count"]
    return (after["inference_count"] - before["inference_count"]) / calls if calls else float("nan")


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
    before = model_stats(url, model)
    saturated = asyncio.run(closed_loop(host, port, request, SATURATION_CONCURRENCY, window_s, warmup_s=1.0))
    after = model_stats(url, model)
    if saturated.statuses.get(200, 0) != saturated.completed:
        raise RuntimeError(f"calibration: the server answered {saturated.statuses} at saturation")
    rows = rows_per_call(before, after)
    calls = after["execution_count"] - before["execution_count"]
    compute_ns = after["inference_stats"]["compute_infer"]["ns"] - before["inference_stats"]["compute_infer"]["ns"]
    served_call_s = compute_ns / calls / 1e9
    per_request_s = 1.0 / saturated.rps
    slowdown = max(1.0, served_call_s / engine(rows, None))
    low_rate = LOW_LOAD_FRACTION * saturated.rps
    low = asyncio.run(open_loop(host, port, request, low_rate, window_s))
    in_replica_s = engine(1, None) + per_request_s
    floor_s = np.clip(low.completed - low.scheduled - in_replica_s, 0.0, None)
    low_summary = low.summary()
    return {
        "benchmark": "calibrate",
        "model": model,
        "url": url,
        "machine": machine.describe(),
        "saturation": {
            "concurrency": SATURATION_CONCURRENCY,
            "rps": round(saturated.rps, 1),
            "rows_per_engine_call": round(rows, 2),
            "engine_ms_per_call_profiled": round(engine(rows, None) * 1e3, 4),
            "engine_ms_per_call_served": round(served_call_s * 1e3, 4),
        },
        "low_load": {"rate": round(low_rate, 1), **{k: low_summary[k] for k in ("p50_ms", "p99_ms", "statuses")}},
        "per_request_ms": round(per_request_s * 1e3, 4),
        "engine_slowdown": round(slowdown, 3),
        "floor_p50_ms": round(float(np.median(floor_s)) * 1e3, 3),
        "floor_p99_ms": round(float(np.percentile(floor_s, 99)) * 1e3, 3),
        "floor_samples_ms": [round(float(v) * 1e3, 4) for v in floor_s],
    }


def write(report: dict, results: Path) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"http-{report['model']}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path
