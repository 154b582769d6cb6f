"""`trtserve capacity load`: closed-loop concurrency sweeps or open-loop rate sweeps against a KServe v2
endpoint, each point measured in windows until three in a row agree within +-10% (perf_analyzer's rule)."""

from __future__ import annotations

import asyncio
import csv
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import orjson

from runtime.capacity.load_generator import build_request, closed_loop, open_loop
from runtime.diagnostics import machine
from runtime.engine.dtypes import from_kserve
from runtime.engine.signature import synthetic

STABLE_WINDOWS = 3
TOLERANCE = 0.10


def request_body(
    url: str,
    model: str,
    batch: int = 1,
    dynamic_size: int = 16,
    binary: bool = False,
    text: str = "The quick brown fox jumps over the lazy dog.",
) -> tuple[bytes, dict[str, str]]:
    """A request for `model` built from its metadata: random data, `batch` rows, other -1 dims at
    `dynamic_size`. Models that take `text` get `text`."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}", timeout=10) as response:
        meta = json.loads(response.read())
    inputs = meta["inputs"]
    if any(i["name"] == "text" and i["datatype"] == "BYTES" for i in inputs):
        doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [batch], "data": [text] * batch}]}
        return orjson.dumps(doc), {"Content-Type": "application/json"}
    rng = np.random.default_rng(0)
    tensors, chunks = [], []
    for spec in inputs:
        shape = [batch] + [dynamic_size if d == -1 else d for d in spec["shape"][1:]]
        array = synthetic(from_kserve(spec["datatype"]).numpy, shape, rng)
        entry = {"name": spec["name"], "datatype": spec["datatype"], "shape": shape}
        if binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            chunks.append(array.tobytes())
        else:
            entry["data"] = array.ravel()
        tensors.append(entry)
    header = orjson.dumps({"inputs": tensors}, option=orjson.OPT_SERIALIZE_NUMPY)
    if binary:
        return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}
    return header, {"Content-Type": "application/json"}


def stable(windows: list[dict], key: str) -> bool:
    """The last STABLE_WINDOWS windows agree on `key` within TOLERANCE of their mean (perf_analyzer's rule)."""
    if len(windows) < STABLE_WINDOWS:
        return False
    values = [w[key] for w in windows[-STABLE_WINDOWS:]]
    mean = float(np.mean(values))
    return mean > 0 and all(abs(v - mean) <= TOLERANCE * mean for v in values)


def steady(windows: list[dict]) -> bool:
    """The stability rule for a load point: the last windows agree on throughput and p50."""
    return stable(windows, "throughput") and stable(windows, "p50_ms")


def until_steady(run_window: Callable[[int], tuple[dict, object]], max_windows: int) -> tuple[list[dict], list]:
    """Calls `run_window(k)` (the k-th window's summary, with its "throughput", and its raw result) until
    the windows are `steady` or `max_windows` ran; returns the summaries and the raw results."""
    windows, results = [], []
    for k in range(max_windows):
        window, result = run_window(k)
        windows.append(window)
        results.append(result)
        if steady(windows):
            break
    return windows, results


def measure(
    host: str,
    port: int,
    request: bytes,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    poisson: bool = True,
    window_s: float = 5.0,
    max_windows: int = 10,
) -> dict:
    """One load point: windows until STABLE_WINDOWS in a row agree on throughput and p50 within 10%."""

    def run_window(_: int) -> tuple[dict, object]:
        if concurrency is not None:
            result = asyncio.run(closed_loop(host, port, request, concurrency, window_s, warmup_s=0.5))
            return {**result.summary(), "throughput": result.rps}, result
        result = asyncio.run(open_loop(host, port, request, rate, window_s, poisson=poisson))
        summary = result.summary()
        return {**summary, "throughput": summary["achieved_rps"]}, result

    windows, _ = until_steady(run_window, max_windows)
    last = windows[-STABLE_WINDOWS:]
    return {
        "concurrency": concurrency,
        "rate": rate,
        "stable": steady(windows),
        "windows": len(windows),
        "throughput": round(float(np.mean([w["throughput"] for w in last])), 1),
        **{k: round(float(np.mean([w[k] for w in last])), 3) for k in ("p50_ms", "p90_ms", "p99_ms")},
        "send_lag_p99_ms": max(w.get("send_lag_p99_ms", 0.0) for w in last),
        "generator_behind": any(w.get("generator_behind", False) for w in last),
        "statuses": last[-1]["statuses"],
    }


def sweep(
    url: str,
    request: bytes,
    results: Path,
    name: str,
    concurrency: list[int] | None = None,
    rates: list[float] | None = None,
    poisson: bool = True,
    window_s: float = 5.0,
) -> dict:
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or 80
    points = []
    for c in concurrency or []:
        points.append(measure(host, port, request, concurrency=c, window_s=window_s))
    for r in rates or []:
        points.append(measure(host, port, request, rate=r, poisson=poisson, window_s=window_s))
    report = {"benchmark": "load", "name": name, "url": url, "machine": machine.describe(), "points": points}
    results.mkdir(parents=True, exist_ok=True)
    (results / f"load-{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(results / f"load-{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "Concurrency",
                "Request Rate",
                "Inferences/Second",
                "p50 latency (us)",
                "p90 latency (us)",
                "p99 latency (us)",
                "Send lag p99 (us)",
                "Stable",
                "Errors",
            ]
        )
        for p in points:
            errors = sum(v for k, v in p["statuses"].items() if k != "200")
            writer.writerow(
                [
                    p["concurrency"] or "",
                    p["rate"] or "",
                    p["throughput"],
                    int(p["p50_ms"] * 1e3),
                    int(p["p90_ms"] * 1e3),
                    int(p["p99_ms"] * 1e3),
                    int(p["send_lag_p99_ms"] * 1e3),
                    p["stable"],
                    errors,
                ]
            )
    return report


def build(url: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    parsed = urlparse(url)
    return build_request(parsed.hostname, parsed.port or 80, path, body, headers)
