"""`python -m benchmarks monitor`: what payload capture and drift accounting cost cnn, and how often drift
alarms on traffic that has not drifted.

One application serves four copies of the built cnn under other names, identical but for monitoring:
`cnn_off` (no capture destination, so no feedback memory either; no drift accounting), `cnn_capture10`
and `cnn_capture100` (capture at 10 % and 100 %, mode all, to a temporary directory, with the feedback
memory a destination brings; no drift accounting) and `cnn_drift` (drift accounting, no capture). Each
cost is measured as alternating windows against `cnn_off` in one run (closed loop, c=32, JSON requests
of standard-normal images, the distribution of the reference): per pair the on/off ratios of throughput
and p99, then the medians of the ratios, so the machine's drift cancels. Pairs alternate which window
runs first. False alarms: `cnn_drift` under unshifted traffic for `alarm_windows` windows of `window_s`
5, counting the windows in which any tensor drifted.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks import targets
from benchmarks.harness import ROOT, closed_load, ensure_model, json_request
from benchmarks.rendering import machine_line, table_row
from runtime.capacity.load_generator import closed_loop
from runtime.capacity.local_server import HOST, PORT, URL, serve_config
from runtime.diagnostics import machine
from runtime.engine.manifest import MANIFEST, read_manifest, write_manifest
from runtime.serve.launcher import LocalServe

CONCURRENCY = 32
IMAGES = 64  # distinct requests sent in turn
ALARM_WINDOW_S = 5.0
TREATMENTS = {"capture10": "cnn_capture10", "capture100": "cnn_capture100", "drift": "cnn_drift"}


def named_copy(source: Path, repository: Path, name: str) -> Path:
    """The version directory `source` as version 1 of a model called `name` (same files, new manifest)."""
    target = repository / name / "1"
    shutil.copytree(source, target)
    (target / MANIFEST).unlink()
    fields = read_manifest(source).to_json()
    fields.pop("files")
    write_manifest(target, {**fields, "name": name, "version": 1})
    return target


def app_args(repository: Path, capture: Path, min_rows: int) -> dict:
    off = {"enabled": False}

    def capturing(percent: float) -> dict:
        return {"destination": str(capture), "mode": "all", "sampling_percent": percent}

    return {
        "repository": str(repository),
        "models": [
            {"name": "cnn_off", "monitor": off},
            {"name": "cnn_capture10", "monitor": off, "capture": capturing(10)},
            {"name": "cnn_capture100", "monitor": off, "capture": capturing(100)},
            {"name": "cnn_drift", "monitor": {"window_s": ALARM_WINDOW_S, "min_rows": min_rows}},
        ],
    }


def requests_for(model: str, images: np.ndarray) -> list[bytes]:
    return [json_request(f"/v2/models/{model}/infer", {"image": image[None]}) for image in images]


def cost(requests: dict[str, list[bytes]], treatment: str, window_s: float, pairs: int) -> dict:
    """Alternating off / on windows; per pair the on/off ratios of throughput and p99."""
    windows = []
    for pair in range(pairs):
        order = ("off", treatment) if pair % 2 == 0 else (treatment, "off")
        for arm in order:
            result = asyncio.run(closed_loop(HOST, PORT, requests[arm], CONCURRENCY, window_s, warmup_s=1.0))
            windows.append({"pair": pair, "arm": arm, **result.summary()})
    ratios = []
    for pair in range(pairs):
        off, on = (next(w for w in windows if w["pair"] == pair and w["arm"] == a) for a in ("off", treatment))
        ratios.append({"throughput": on["rps"] / off["rps"], "p99": on["p99_ms"] / off["p99_ms"]})
    return {
        "treatment": treatment,
        "window_s": window_s,
        "pairs": pairs,
        "throughput_ratio_median": round(statistics.median(r["throughput"] for r in ratios), 4),
        "p99_ratio_median": round(statistics.median(r["p99"] for r in ratios), 4),
        "ratios": ratios,
        "windows": windows,
    }


def _monitor(model: str) -> dict:
    with urllib.request.urlopen(f"{URL}/v2/models/{model}/monitor", timeout=10) as response:
        return json.loads(response.read())


def false_alarms(requests: list[bytes], windows: int) -> dict:
    """Unshifted traffic to cnn_drift until `windows` windows have closed; the windows that drifted."""
    seen: dict[float, dict] = {}
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            asyncio.run(closed_loop(HOST, PORT, requests, 8, 5.0, warmup_s=0.0))

    # Only windows that opened after this load began: the one open now also holds the cost phase's traffic,
    # IMAGES images sent over and over, which is not a sample of the reference's distribution.
    began = time.time()
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    deadline = time.monotonic() + windows * ALARM_WINDOW_S * 3 + 60
    try:
        while len(seen) < windows and time.monotonic() < deadline:
            doc = _monitor("cnn_drift")
            window = doc["window"]
            if window is not None and window["start"] >= began and window["start"] not in seen:
                seen[window["start"]] = {
                    "rows": window["rows"],
                    "drifted": [t["name"] for t in doc["tensors"] if t["drifted"]],
                }
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join(30)
    alarms = sum(1 for w in seen.values() if w["drifted"])
    return {"window_s": ALARM_WINDOW_S, "windows": len(seen), "alarms": alarms, "per_window": list(seen.values())}


def measure(repository: Path, results: Path, window_s: float = 5.0, pairs: int = 5, alarm_windows: int = 20) -> dict:
    source, _ = ensure_model(repository, ROOT / "configs/models/cnn.yaml")
    work = Path(tempfile.mkdtemp(prefix="trtserve-monitor-"))
    repo, capture = work / "repo", work / "capture"
    for name in ("cnn_off", *TREATMENTS.values()):
        named_copy(source, repo, name)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((IMAGES, 3, 32, 32)).astype(np.float32)
    requests = {"off": requests_for("cnn_off", images)}
    requests.update({arm: requests_for(model, images) for arm, model in TREATMENTS.items()})
    # Fresh images for the false-alarm phase, many more than a window's sample, so windows are independent.
    alarm_requests = requests_for("cnn_drift", rng.standard_normal((1024, 3, 32, 32)).astype(np.float32))
    config = serve_config(work / "monitor.yaml", app_args(repo, capture, min_rows=200), name="monitor")
    try:
        with LocalServe(config, log_path=work / "serve.log"):
            baseline = closed_load(requests["off"], CONCURRENCY, window_s)
            print(f"cnn_off: {baseline['rps']:.0f} req/s at c={CONCURRENCY}, JSON", file=sys.stderr)
            costs = {}
            for arm in TREATMENTS:
                costs[arm] = cost(requests, arm, window_s, pairs)
                print(
                    f"{arm}: throughput x{costs[arm]['throughput_ratio_median']:.3f}, "
                    f"p99 x{costs[arm]['p99_ratio_median']:.3f}",
                    file=sys.stderr,
                )
            alarms = false_alarms(alarm_requests, alarm_windows)
            print(f"false alarms: {alarms['alarms']} of {alarms['windows']} windows", file=sys.stderr)
            captured = sum(1 for _ in capture.rglob("*.parquet"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "benchmark": "monitor",
        "machine": machine.describe(),
        "model": "cnn",
        "concurrency": CONCURRENCY,
        "encoding": "json",
        "baseline": baseline,
        "costs": costs,
        "false_alarms": alarms,
        "capture_files": captured,
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "monitor.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def render(data: dict) -> list[str]:
    costs, alarms = data["costs"], data["false_alarms"]
    limits = {"capture10": targets.CAPTURE_10_COST, "capture100": targets.CAPTURE_100_COST, "drift": targets.DRIFT_COST}
    names = {"capture10": "capture at 10 %", "capture100": "capture at 100 %", "drift": "drift accounting"}
    first = next(iter(costs.values()))
    lines = [
        "## Model monitoring: the cost of capture and drift accounting, false drift alarms",
        "",
        machine_line(data["machine"]),
        "",
        f"Command: `python -m benchmarks monitor`. Four identical copies of cnn in one application, one replica "
        f"each: without monitoring, with capture at 10 % and at 100 % (mode all, Parquet), with drift accounting. "
        f"Closed loop at c={data['concurrency']}, JSON; each cost is {first['pairs']} pairs of {first['window_s']:g} s "
        "windows against the copy without monitoring, alternating which runs first; the medians of the pairs' "
        f"on/off ratios. Baseline: {data['baseline']['rps']:.0f} req/s, p99 {data['baseline']['p99_ms']:.1f} ms. "
        f"False alarms: unshifted standard-normal images for {alarms['windows']} windows of {alarms['window_s']:g} s.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for arm, limit in limits.items():
        c = costs[arm]
        lines.append(
            table_row(
                f"{names[arm]} costs at most {limit:.0%} of throughput and p99",
                f"throughput x{c['throughput_ratio_median']:.3f}, p99 x{c['p99_ratio_median']:.3f}",
                c["throughput_ratio_median"] >= 1 - limit and c["p99_ratio_median"] <= 1 + limit,
            )
        )
    lines += [
        table_row(
            f"false drift alarms on unshifted traffic: at most {targets.FALSE_ALARMS:.0%} of windows",
            f"{alarms['alarms']} of {alarms['windows']} windows",
            alarms["windows"] >= 20 and alarms["alarms"] <= targets.FALSE_ALARMS * alarms["windows"],
        ),
        "",
    ]
    return lines


def add_parser(sub) -> None:
    p = sub.add_parser("monitor", help="the cost of payload capture and drift accounting; false drift alarms")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--window", type=float, default=5.0, help="seconds per on or off window")
    p.add_argument("--pairs", type=int, default=5, help="on/off window pairs per cost (at least 5)")
    p.add_argument("--alarm-windows", type=int, default=20, help="drift windows of unshifted traffic")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))


def run(args) -> None:
    if args.pairs < 5:
        raise SystemExit("--pairs: at least 5 on/off pairs, so the machine's drift cancels in the median")
    measure(args.repository, args.results, window_s=args.window, pairs=args.pairs, alarm_windows=args.alarm_windows)
