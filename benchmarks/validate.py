"""`python -m benchmarks validate`: predict a replica's capacity under a p99 SLO, then measure it.

1. Profile the engine in-process at the sizes the workload sends (no server running).
2. Start the server (or use `--url`), measure the HTTP path (`benchmarks.calibrate`).
3. Predict with the simulator (`benchmarks.plan.predict`) for each batch limit; the one with the highest
   predicted max rate is the recommended config, and the server is restarted with it if it differs.
4. Measure, open loop with Poisson arrivals, latency from the schedule: the highest rate whose p99 stays
   within the SLO with every request answered 200 (bisection), then the p99 at 70% of that rate, in
   windows until three in a row agree (perf_analyzer's stability rule), pooled. Before each window, a
   calibration round (`benchmarks.calibrate`, shorter runs). Each probe and window runs at its rate for a
   while first, unmeasured (`http_load.settling_s`): the run before it may have been an overload.
5. Predict what was measured from the calibrations around it: this machine's speed drifts by tens of
   percent over minutes, and a calibration from minutes before describes another machine. The max rate
   from the first calibration and the round right after the bisection, pooled; each window from the
   round right before it, and the p99 from the pooled windows' simulated latencies together (as the
   measured p99 pools theirs). What the first calibration alone predicted, before anything was
   measured, is recorded beside them (`max_rps_first_calibration`, `p99_ms_first_calibration`).
6. Write DIR/validate.json: `predicted` and `measured`, each with `max_rps` and `p99_ms`; and the plots.

The p99 is compared at one offered rate, 70% of the measured max, so the latency prediction is judged on
the same load as the measurement (the prediction at 70% of its own max rate is recorded too).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import urllib.request
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from benchmarks import calibrate, load, machine
from benchmarks.http_load import open_loop, settling_s
from benchmarks.plan import LOAD_FRACTION, HttpPath, Replica, predict
from benchmarks.profile import batch_seconds, profile
from benchmarks.simulate import SimResult

TARGETS = {"max_rps": 0.15, "p99_ms": 0.25}
MAX_WINDOWS = 6  # for the p99 at 70% of the max rate: at least load.STABLE_WINDOWS
ROUND_WINDOW_S = 4.0  # the calibration rounds between those windows: each of its runs (stall runs 3x)
PREDICT_SEEDS = 3  # simulation runs pooled for each predicted point (see plan.Replica.seeds)
SENTENCE = "The quick brown fox jumps over the lazy dog."


def workload_sizes(version_dir: Path) -> dict[str, int]:
    """The non-batch sizes of what `load.request_body` sends: the sentence's token count for models that
    take text, 16 for any other dynamic dim."""
    from runtime.preprocessing import load as load_preprocessing
    from runtime.signature import Signature

    manifest = json.loads((version_dir / "manifest.json").read_text())
    signature = Signature.from_manifest(manifest)
    tokenize = load_preprocessing(version_dir, manifest, signature)
    if tokenize is not None:
        ids = tokenize(np.array([SENTENCE.encode()], dtype=object))["input_ids"]
        seq = signature.input("input_ids").shape[1]
        return {seq: ids.shape[1]} if isinstance(seq, str) else {}
    return {d: 16 for d in signature.dims if d != "batch"}


def _takes_text(version_dir: Path) -> bool:
    manifest = json.loads((version_dir / "manifest.json").read_text())
    return "tokenizer" in (manifest.get("preprocessing") or {})


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


def _server_batching(url: str, model: str) -> tuple[int, float]:
    """max_batch_size and max_queue_delay_ms of the running model (Triton's config)."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}/config", timeout=10) as response:
        config = json.loads(response.read())
    delay_us = config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0)
    return int(config["max_batch_size"]), float(delay_us) / 1e3


def validate(
    version_dir: Path,
    slo_p99_ms: float,
    results: Path,
    url: str | None = None,
    window_s: float = 10.0,
) -> dict:
    from benchmarks.serving import HOST, PORT, _config
    from runtime.launch import LocalServe

    version_dir = Path(version_dir).resolve()
    model = json.loads((version_dir / "manifest.json").read_text())["name"]
    sizes = workload_sizes(version_dir)
    engine_profile = profile(version_dir, sizes=sizes)
    seconds = batch_seconds(engine_profile)
    work = Path(tempfile.mkdtemp(prefix="trtserve-validate-"))

    def server(max_batch_size: int | None):
        if url:
            return nullcontext()
        spec = {"name": model, **({"max_batch_size": max_batch_size} if max_batch_size else {})}
        args = {"repository": str(version_dir.parent.parent), "models": [spec]}
        return LocalServe(_config(work / f"{model}.yaml", "runtime.app:build_app", args), log_path=work / "serve.log")

    base = url or f"http://{HOST}:{PORT}"
    parsed = urlparse(base)
    host, port = parsed.hostname, parsed.port or 80
    with server(None):
        body, headers = load.request_body(base, model, 1, text=SENTENCE)
        request = load.build(base, f"/v2/models/{model}/infer", body, headers)
        http_report = calibrate.calibrate(base, host, port, model, request, seconds, window_s=min(window_s, 8.0))
        calibrate.write(http_report, results)
        http = HttpPath.from_report(http_report)
        running_batch, delay_ms = _server_batching(base, model)
        options = [running_batch] if url else sorted(seconds)
        replicas = {b: Replica(seconds, http, b, delay_ms, seeds=PREDICT_SEEDS) for b in options}
        predictions = {b: predict(replicas[b], slo_p99_ms) for b in options}
        best = max(options, key=lambda b: (predictions[b]["max_rps"], -b))
        print(f"{model}: recommended max_batch_size {best}: {predictions[best]['max_rps']} req/s", file=sys.stderr)
        restart = best != running_batch

        def recalibrate() -> dict:
            round_s = min(ROUND_WINDOW_S, window_s / 2)
            return calibrate.calibrate(base, host, port, model, request, seconds, window_s=round_s)

        def stats() -> dict:
            return calibrate.model_stats(base, model)

        if not restart:
            measured, rounds = _measure(host, port, request, slo_p99_ms, http_report, window_s, recalibrate, stats)
    if restart:
        with server(best):
            measured, rounds = _measure(host, port, request, slo_p99_ms, http_report, window_s, recalibrate, stats)
    # The machine's speed drifts by tens of percent over minutes, so each prediction is made from the
    # calibrations taken around what it is compared with: the max rate from the first calibration and the
    # round right after the bisection (before and after it, pooled); the p99 at the rate it was measured
    # at window by window (below). What the first calibration alone predicts (before anything was
    # measured) is kept beside them.
    around_max = calibrate.pool([http_report, rounds[0]])
    prediction = predict(
        Replica(seconds, HttpPath.from_report(around_max), best, delay_ms, seeds=PREDICT_SEEDS), slo_p99_ms
    )

    def at_measured_rate(report: dict):
        replica = Replica(seconds, HttpPath.from_report(report), best, delay_ms, seeds=PREDICT_SEEDS)
        return replica.simulate(measured["at_rps"])

    # Each window is predicted from the round right before it. The measured p99 pools windows that met the
    # machine at different speeds, and its tail comes mostly from the slowest; so does the predicted
    # one: the p99 of those windows' simulated latencies together. Not one simulation of the rounds'
    # figures averaged, which is recorded beside it: queueing is convex in the service time, and an
    # average machine has a lighter tail than the average of the machines.
    by_window = [at_measured_rate(r) for r in rounds]
    pooled = SimResult.pooled(by_window[-load.STABLE_WINDOWS :])
    during = calibrate.pool(rounds[-load.STABLE_WINDOWS :])
    predicted = {
        "max_rps": prediction["max_rps"],
        "p99_ms": round(pooled.percentile_ms(99), 3),
        "at_rps": measured["at_rps"],
        "window_p99_ms": [round(r.percentile_ms(99), 3) for r in by_window],
        "rows_per_engine_call": round(float(pooled.batch_sizes.mean()), 2),
        "p99_ms_pooled_rounds": round(at_measured_rate(during).percentile_ms(99), 3),
        "max_rps_first_calibration": predictions[best]["max_rps"],
        "p99_ms_first_calibration": round(replicas[best].simulate(measured["at_rps"]).percentile_ms(99), 3),
        "p99_ms_at_own_70pct": prediction["p99_ms"],
        "latency_quantiles_ms": [round(pooled.percentile_ms(q), 3) for q in range(1, 100)],
        "curve": prediction["curve"],
    }
    errors = {k: round((predicted[k] - measured[k]) / measured[k], 4) for k in TARGETS}
    report = {
        "benchmark": "validate",
        "model": model,
        "version": version_dir.name,
        "machine": machine.describe(),
        "slo_p99_ms": slo_p99_ms,
        "workload": {"request": "text" if _takes_text(version_dir) else "tensor", "sizes": sizes, "rows": 1},
        "config": {"replicas": 1, "max_batch_size": best, "max_queue_delay_ms": delay_ms, "url": base},
        "window_s": window_s,
        "predicted": predicted,
        "measured": measured,
        "relative_error": errors,
        "met": {k: abs(errors[k]) <= TARGETS[k] for k in TARGETS},
        "http": {k: v for k, v in http_report.items() if k != "floor_samples_ms"},
        "http_around_max": {k: v for k, v in around_max.items() if k != "floor_samples_ms"},
        "http_during_p99": {k: v for k, v in during.items() if k != "floor_samples_ms"},
        "profile": engine_profile,
        "predicted_by_batch_limit": {str(b): p["max_rps"] for b, p in predictions.items()},
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "validate.json").write_text(json.dumps(report, indent=1) + "\n")
    # The rounds in full (floor samples included), one a window, so each window's prediction can be rerun.
    (results / f"rounds-{model}.json").write_text(json.dumps(rounds) + "\n")
    from benchmarks import plots

    plots.validation(report, results)
    return report


def _measure(host, port, request, slo_ms, http_report, window_s, recalibrate, stats) -> tuple[dict, list[dict]]:
    """The max sustainable rate, then the p99 at 70% of it in windows, each after a calibration round
    (`recalibrate()`; `stats()` reads the server's /stats); returns the measurement and the rounds."""
    ceiling = http_report["saturation"]["rps"]
    max_rps, probes = measure_max_rate(host, port, request, slo_ms, 0.2 * ceiling, 1.2 * ceiling, window_s)
    if not max_rps:
        low = probes[0]
        raise SystemExit(
            f"even {low['rate']:.0f} req/s (a fifth of the closed-loop maximum) is not sustained within p99 "
            f"<= {slo_ms:g} ms: {'; '.join(low['misses'])}"
        )
    at = round(max_rps * LOAD_FRACTION, 1)

    # Windows until three in a row agree on throughput and median within 10% (load.until_steady); the p99 is
    # that of the three pooled. The machine's speed drifts from minute to minute: one window's p99 is
    # one sample of it. Before each window a calibration round, for the prediction at this rate.
    rounds = []

    def run_window(k: int) -> tuple[dict, object]:
        rounds.append(recalibrate())
        before = stats()
        result = asyncio.run(open_loop(host, port, request, at, window_s, seed=7 + k, warmup_s=settling_s(window_s)))
        summary = result.summary()
        rows = calibrate.rows_per_call(before, stats())
        return {**summary, "throughput": summary["achieved_rps"], "rows_per_engine_call": round(rows, 2)}, result

    windows, results = load.until_steady(run_window, MAX_WINDOWS)
    pooled, last = results[-load.STABLE_WINDOWS :], windows[-load.STABLE_WINDOWS :]
    ok = np.concatenate([r.statuses == 200 for r in pooled])
    latencies = np.concatenate([r.latencies_ms for r in pooled])[ok]
    statuses = {}
    for w in last:
        for status, count in w["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    measured = {
        "max_rps": round(max_rps, 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "at_rps": at,
        "windows": len(windows),
        "stable": load.steady(windows),
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
    return measured, rounds
