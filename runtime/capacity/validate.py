"""`trtserve capacity validate`: predict a replica's capacity under a p99 SLO, then measure it.

1. Profile the engine in-process at the sizes the workload sends (no server running).
2. Start the server (or use `--url`) and measure the HTTP path once (`calibrate`).
3. Predict with the simulator (`plan.predict`) for each batch limit; the one with the highest
   predicted max rate is the recommended config, and the server is restarted with it if it differs.
4. Measure, open loop with Poisson arrivals, latency from the schedule: the highest rate whose p99 stays
   within the SLO with every request answered 200 (bisection), then the p99 at 70% of that rate, in
   windows until three in a row agree (perf_analyzer's stability rule), those three pooled. Each probe
   and window first runs at its rate for a while, unmeasured (`load_generator.settling_s`): the run before it
   may have been an overload.
5. Write DIR/validate.json: `predicted` and `measured`, each with `max_rps` and `p99_ms`.

The p99 is compared at one offered rate, 70% of the measured max, so the latency prediction is judged on
the same load as the measurement (the prediction at 70% of its own max rate is recorded too).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from runtime.capacity import calibrate, load_sweep
from runtime.capacity.latency_profile import batch_seconds, profile
from runtime.capacity.load_generator import open_loop, settling_s
from runtime.capacity.local_server import URL, server
from runtime.capacity.plan import LOAD_FRACTION, HttpPath, Replica, predict
from runtime.capacity.server_stats import model_stats, rows_per_call, served_batching
from runtime.diagnostics import machine
from runtime.engine.manifest import read_manifest

MAX_WINDOWS = 6  # for the p99 at 70% of the max rate: at least load_sweep.STABLE_WINDOWS
PREDICT_SEEDS = 3  # simulation runs pooled for each predicted point (see plan.Replica.seeds)
SENTENCE = "The quick brown fox jumps over the lazy dog."
# What the planner promises: predicted within this relative error of measured (benchmarks.targets.CAPACITY).
ACCURACY = {"max_rps": 0.15, "p99_ms": 0.25}


def workload_sizes(version_dir: Path) -> dict[str, int]:
    """The non-batch sizes of what `load_sweep.request_body` sends: the sentence's token count for models that
    take text, 16 for any other dynamic dim."""
    from runtime.engine.preprocessing import load as load_preprocessing

    manifest = read_manifest(version_dir)
    signature = manifest.signature
    tokenize = load_preprocessing(version_dir, manifest)
    if tokenize is not None:
        ids = tokenize(np.array([SENTENCE.encode()], dtype=object))["input_ids"]
        seq = signature.input("input_ids").shape[1]
        return {seq: ids.shape[1]} if isinstance(seq, str) else {}
    return {d: 16 for d in signature.dims if d != "batch"}


def sustained(host: str, port: int, request: bytes, rate: float, slo_ms: float, window_s: float) -> dict:
    """One open-loop probe. Sustained: p99 within the SLO, every request answered 200, and answers keep up
    with the schedule. Send lag is recorded but does not fail a probe: latency counts from the schedule,
    so a generator that falls behind is charged in the latency anyway."""
    summary = asyncio.run(open_loop(host, port, request, rate, window_s, warmup_s=settling_s(window_s))).summary()
    misses = []
    if summary["p99_ms"] > slo_ms:
        misses.append(f"p99 {summary['p99_ms']:.1f} ms")
    if set(summary["statuses"]) != {"200"}:
        misses.append(f"statuses {summary['statuses']}")
    if summary["achieved_rps"] < 0.95 * summary["scheduled_rps"]:
        misses.append(f"answered {summary['achieved_rps']:.0f}/s of {summary['scheduled_rps']:.0f}/s scheduled")
    return {"rate": round(rate, 1), "sustained": not misses, "misses": misses, **summary}


def measure_max_rate(host, port, request, slo_ms: float, low: float, high: float, window_s: float, iterations=6):
    """Bisection between `low` (assumed sustainable, checked) and `high` on open-loop probes."""
    probes = []
    first = sustained(host, port, request, low, slo_ms, window_s)
    probes.append(first)
    if not first["sustained"]:
        return 0.0, probes
    for _ in range(iterations):
        middle = (low + high) / 2
        probe = sustained(host, port, request, middle, slo_ms, window_s)
        probes.append(probe)
        verdict = "sustained" if probe["sustained"] else "not sustained: " + "; ".join(probe["misses"])
        print(f"  {middle:.0f} req/s: p99 {probe['p99_ms']:.1f} ms, {verdict}", file=sys.stderr)
        low, high = (middle, high) if probe["sustained"] else (low, middle)
    return low, probes


def validate(
    version_dir: Path,
    slo_p99_ms: float,
    results: Path,
    url: str | None = None,
    window_s: float = 10.0,
) -> dict:
    version_dir = Path(version_dir).resolve()
    manifest = read_manifest(version_dir)
    model = manifest.name
    sizes = workload_sizes(version_dir)
    engine_profile = profile(version_dir, sizes=sizes)
    seconds = batch_seconds(engine_profile)
    work = Path(tempfile.mkdtemp(prefix="trtserve-validate-"))

    def serving(max_batch_size: int | None):
        if url:
            return nullcontext()
        spec = {"name": model, **({"max_batch_size": max_batch_size} if max_batch_size else {})}
        args = {"repository": str(version_dir.parent.parent), "models": [spec]}
        return server(work, f"{model}-{max_batch_size or 'default'}", args)

    base = url or URL
    parsed = urlparse(base)
    host, port = parsed.hostname, parsed.port or 80
    with serving(None):
        body, headers = load_sweep.request_body(base, model, 1, text=SENTENCE)
        request = load_sweep.build(base, f"/v2/models/{model}/infer", body, headers)
        http_report = calibrate.calibrate(base, model, request, seconds, window_s=min(window_s, 8.0))
        calibrate.write(http_report, results)
        http = HttpPath.from_report(http_report)
        running_batch, delay_ms = served_batching(base, model)
        options = [running_batch] if url else sorted(seconds)
        predictions = {
            b: predict(Replica(seconds, http, b, delay_ms, seeds=PREDICT_SEEDS), slo_p99_ms) for b in options
        }
        best = max(options, key=lambda b: (predictions[b]["max_rps"], -b))
        print(f"{model}: recommended max_batch_size {best}: {predictions[best]['max_rps']} req/s", file=sys.stderr)
        if best == running_batch:
            measured = _measure(host, port, request, slo_p99_ms, http_report, window_s, base, model)
    if best != running_batch:
        with serving(best):
            measured = _measure(host, port, request, slo_p99_ms, http_report, window_s, base, model)
    replica = Replica(seconds, http, best, delay_ms, seeds=PREDICT_SEEDS)
    at_measured = replica.simulate(measured["at_rps"])
    prediction = predictions[best]
    predicted = {
        "max_rps": prediction["max_rps"],
        "p99_ms": round(at_measured.percentile_ms(99), 3),
        "at_rps": measured["at_rps"],
        "rows_per_engine_call": round(float(at_measured.batch_sizes.mean()), 2),
        "p99_ms_at_own_70pct": prediction["p99_ms"],
        "latency_quantiles_ms": [round(at_measured.percentile_ms(q), 3) for q in range(1, 100)],
        "curve": prediction["curve"],
    }
    bands = ACCURACY
    errors = {k: round((predicted[k] - measured[k]) / measured[k], 4) for k in bands}
    report = {
        "benchmark": "validate",
        "model": model,
        "version": manifest.version,
        "machine": machine.describe(),
        "slo_p99_ms": slo_p99_ms,
        "workload": {"request": "text" if manifest.preprocessing else "tensor", "sizes": sizes, "rows": 1},
        "config": {"replicas": 1, "max_batch_size": best, "max_queue_delay_ms": delay_ms, "url": base},
        "window_s": window_s,
        "predicted": predicted,
        "measured": measured,
        "relative_error": errors,
        "met": {k: abs(errors[k]) <= bands[k] for k in bands},
        "http": {k: v for k, v in http_report.items() if k != "floor_samples_ms"},
        "profile": engine_profile,
        "predicted_by_batch_limit": {str(b): p["max_rps"] for b, p in predictions.items()},
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "validate.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _measure(host, port, request, slo_ms, http_report, window_s, url: str, model: str) -> dict:
    """The max sustainable rate, then the p99 at 70% of it in windows until three in a row agree on
    throughput and median within 10% (load_sweep.until_steady), those three pooled."""
    ceiling = http_report["saturation"]["rps"]
    max_rps, probes = measure_max_rate(host, port, request, slo_ms, 0.2 * ceiling, 1.2 * ceiling, window_s)
    if not max_rps:
        low = probes[0]
        raise SystemExit(
            f"even {low['rate']:.0f} req/s (a fifth of the closed-loop maximum) is not sustained within p99 "
            f"<= {slo_ms:g} ms: {'; '.join(low['misses'])}"
        )
    at = round(max_rps * LOAD_FRACTION, 1)

    def run_window(k: int) -> tuple[dict, object]:
        before = model_stats(url, model)
        result = asyncio.run(open_loop(host, port, request, at, window_s, seed=7 + k, warmup_s=settling_s(window_s)))
        summary = result.summary()
        rows = rows_per_call(before, model_stats(url, model))
        return {**summary, "throughput": summary["achieved_rps"], "rows_per_engine_call": round(rows, 2)}, result

    windows, runs = load_sweep.until_steady(run_window, MAX_WINDOWS)
    pooled, last = runs[-load_sweep.STABLE_WINDOWS :], windows[-load_sweep.STABLE_WINDOWS :]
    ok = np.concatenate([r.statuses == 200 for r in pooled])
    latencies = np.concatenate([r.latencies_ms for r in pooled])[ok]
    statuses: dict[str, int] = {}
    for w in last:
        for status, count in w["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    return {
        "max_rps": round(max_rps, 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "at_rps": at,
        "windows": len(windows),
        "stable": load_sweep.steady(windows),
        "window_p99_ms": [w["p99_ms"] for w in windows],
        "rows_per_engine_call": round(float(np.mean([w["rows_per_engine_call"] for w in last])), 2),
        "achieved_rps": round(float(np.mean([w["achieved_rps"] for w in last])), 1),
        "statuses": statuses,
        "send_lag_p99_ms": max(w["send_lag_p99_ms"] for w in last),
        "latency_quantiles_ms": [round(float(np.percentile(latencies, q)), 3) for q in range(1, 100)],
        "probes": [
            {k: p[k] for k in ("rate", "achieved_rps", "p50_ms", "p99_ms", "send_lag_p99_ms", "sustained", "misses")}
            for p in probes
        ],
    }
