"""`python -m benchmarks rollout`: model updates under steady open-loop load on cnn.

A repository of three cnn versions made from the built one: 1 (stable), 2 (the same model, another
version number) and 3 (a bad candidate: the classifier's rows permuted, so it predicts other classes;
neither carries an eval set, so only traffic analysis can catch 3).

1. Shadow cost: alternating windows with no rollout and with shadow 100 % to version 2, at half of what
   the stable path sustains alone (measured first, closed loop); per pair, the on/off ratios of p50 and
   of throughput; the medians of those ratios. Pairs alternate which window runs first.
2. A bad candidate: canary to 3, judged every `interval_s`; how many intervals after its first traffic
   it was rolled back, against failure_limit + 1.
3. Transitions: canary to 2 through 10, 50, 100 % (promoted), a rollback after promotion, a start,
   pause, resume and promotion by hand; every response of every phase counted by status.
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
import onnx
from onnx import numpy_helper

from benchmarks import targets
from benchmarks.harness import ROOT, binary_request, closed_load, ensure_model
from benchmarks.rendering import machine_line, table_row
from runtime.capacity.load_generator import open_loop
from runtime.capacity.local_server import HOST, PORT, URL, serve_config
from runtime.diagnostics import machine
from runtime.engine.evaluation import EVAL_FILE
from runtime.engine.manifest import MANIFEST, read_manifest, write_manifest
from runtime.serve.launcher import LocalServe

INTERVAL_S = 4.0
FAILURE_LIMIT = 2
MIN_REQUESTS = 50


def derive_version(source: Path, target: Path, version: int, permute_classes: bool = False) -> Path:
    """A copy of `source` as `version`; with permute_classes, every ONNX file's classifier (the last 2-D
    initializer) has its rows permuted. The eval set is left out: its recorded score would not hold."""
    shutil.copytree(source, target)
    (target / MANIFEST).unlink()
    (target / EVAL_FILE).unlink(missing_ok=True)
    if permute_classes:
        rng = np.random.default_rng(3)
        for path in target.glob("*.onnx"):
            model = onnx.load(str(path))
            weight = [t for t in model.graph.initializer if len(t.dims) == 2][-1]
            array = numpy_helper.to_array(weight)
            order = rng.permutation(array.shape[0])
            while (order == np.arange(len(order))).any():  # every class moves
                order = rng.permutation(array.shape[0])
            weight.CopyFrom(numpy_helper.from_array(array[order], weight.name))
            onnx.save(model, str(path))
    fields = read_manifest(source).to_json()
    fields.pop("files")
    write_manifest(target, {**fields, "version": version, "evaluation": None})
    return target


class Load(threading.Thread):
    """Open-loop load for `seconds` in a thread of its own; `result` when it has joined."""

    def __init__(self, request: bytes, rate: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.request, self.rate, self.seconds, self.result = request, rate, seconds, None

    def run(self) -> None:
        self.result = asyncio.run(open_loop(HOST, PORT, self.request, self.rate, self.seconds, seed=int(time.time())))


def command(action: str, **args) -> dict:
    body = json.dumps({"action": action, **args}).encode()
    request = urllib.request.Request(f"{URL}/v2/models/cnn/rollout", body, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def status() -> dict:
    with urllib.request.urlopen(f"{URL}/v2/models/cnn/rollout", timeout=30) as response:
        return json.loads(response.read())


def wait_ended(timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = status()
        if current["state"] in ("promoted", "rolled_back", "refused"):
            return current
        time.sleep(0.25)
    raise TimeoutError(f"the rollout did not end within {timeout_s:.0f} s: {current}")


def history() -> list[dict]:
    return command("history")


def version_runs(version: str) -> int:
    with urllib.request.urlopen(f"{URL}/v2/models/cnn/versions/{version}/stats", timeout=30) as response:
        return json.loads(response.read())["model_stats"][0]["inference_stats"]["queue"]["count"]  # mirrored too


def _brief(interval: dict, *extra: str) -> dict:
    return {k: interval[k] for k in ("weight", "outcome", "reasons", *extra)}


def _statuses(result) -> dict[str, int]:
    values, counts = np.unique(result.statuses, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def _add(total: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v


def shadow_cost(request: bytes, rate: float, window_s: float, pairs: int, statuses: dict) -> dict:
    """Alternating shadow-off / shadow-on windows; per pair the on/off ratios of p50 and throughput."""
    # Version 2 loaded and warm before the first window (a rollback keeps the candidate loaded).
    command("start", to=2, strategy="shadow", interval_s=3600, min_requests=10**9)
    command("rollback", reason="v2 loaded for the shadow windows")
    windows = []
    for pair in range(pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        for shadow in order:
            if shadow:
                command("start", to=2, strategy="shadow", shadow_percent=100, interval_s=3600, min_requests=10**9)
            mirrored_before = version_runs("2")
            result = asyncio.run(open_loop(HOST, PORT, request, rate, window_s, seed=pair, warmup_s=1.0))
            mirrored = version_runs("2") - mirrored_before
            if shadow:
                command("rollback", reason="shadow window ended")
            summary = result.summary()
            _add(statuses, summary["statuses"])
            windows.append({"pair": pair, "shadow": shadow, "mirrored_runs": mirrored, **summary})
    ratios = []
    for pair in range(pairs):
        off, on = (next(w for w in windows if w["pair"] == pair and w["shadow"] is s) for s in (False, True))
        ratios.append(
            {
                "p50": on["p50_ms"] / off["p50_ms"],
                "throughput": on["achieved_rps"] / off["achieved_rps"],
                # mirrored runs were counted over the window and its 1 s warm-up
                "mirrored_share": on["mirrored_runs"] / max(1, on["requests"] * (window_s + 1) / window_s),
            }
        )
    return {
        "rate_rps": round(rate, 1),
        "window_s": window_s,
        "pairs": pairs,
        "p50_ratio_median": round(statistics.median(r["p50"] for r in ratios), 4),
        "throughput_ratio_median": round(statistics.median(r["throughput"] for r in ratios), 4),
        "mirrored_share_median": round(statistics.median(r["mirrored_share"] for r in ratios), 4),
        "ratios": ratios,
        "windows": windows,
    }


def bad_candidate(request: bytes, rate: float, statuses: dict) -> dict:
    """Canary to the bad version 3 under load: when was it rolled back, counted in intervals."""
    seconds = INTERVAL_S * (FAILURE_LIMIT + 4) + 10
    load = Load(request, rate, seconds)
    load.start()
    time.sleep(2)
    started = command(
        "start", to=3, strategy="canary", steps=[10, 50, 100], interval_s=INTERVAL_S,
        failure_limit=FAILURE_LIMIT, min_requests=MIN_REQUESTS,
    )  # fmt: skip
    ended = wait_ended(seconds)
    load.join()
    _add(statuses, _statuses(load.result))
    events = history()
    begun = next(e["at"] for e in reversed(events) if e["state"] == "progressing")
    rolled = next(e["at"] for e in reversed(events) if e["state"] == "rolled_back")
    return {
        "state": ended["state"],
        "reason": ended["reason"],
        "started_state": started["state"],
        "seconds_to_rollback": round(rolled - begun, 2),
        "intervals_to_rollback": round((rolled - begun) / INTERVAL_S, 2),
        "judged": [
            {k: i[k] for k in ("weight", "outcome", "reasons", "agreement", "compared")} for i in ended["intervals"]
        ],
        "statuses": _statuses(load.result),
    }


def transitions(request: bytes, rate: float, statuses: dict) -> dict:
    """Every kind of transition under one steady load; the statuses of all its responses."""
    seconds = INTERVAL_S * 3 * 4 + 40
    load = Load(request, rate, seconds)
    load.start()
    time.sleep(2)
    steps = []

    def record(name: str, body: dict) -> None:
        steps.append({"step": name, "state": body.get("state"), "applied_everywhere": body.get("applied_everywhere")})

    record(
        "canary 10,50,100 to 2",
        command(
            "start", to=2, steps=[10, 50, 100], interval_s=INTERVAL_S, failure_limit=FAILURE_LIMIT,
            min_requests=MIN_REQUESTS,
        ),
    )  # fmt: skip
    ended = wait_ended(seconds)
    record("judged", ended)
    judged = [_brief(i) for i in ended["intervals"]]
    record("rollback after promotion", command("rollback", reason="benchmark: back to the previous version"))
    record("start canary to 2", command("start", to=2, steps=[50, 100], interval_s=600))
    time.sleep(2)
    record("pause", command("pause"))
    time.sleep(2)
    record("resume", command("resume"))
    time.sleep(2)
    record("promote by hand", command("promote"))
    load.join()
    _add(statuses, _statuses(load.result))
    return {"steps": steps, "canary_intervals": judged, "statuses": _statuses(load.result), "seconds": seconds}


def measure(repository: Path, results: Path, window_s: float = 8.0, pairs: int = 5) -> dict:
    source, _ = ensure_model(repository, ROOT / "configs/models/cnn.yaml")
    work = Path(tempfile.mkdtemp(prefix="trtserve-rollout-"))
    repo = work / "repo"
    derive_version(source, repo / "cnn" / "1", 1)
    derive_version(source, repo / "cnn" / "2", 2)
    derive_version(source, repo / "cnn" / "3", 3, permute_classes=True)
    config = serve_config(
        work / "rollout.yaml", {"repository": str(repo), "models": [{"name": "cnn", "version": 1}]}, name="rollout"
    )
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    request = binary_request("/v2/models/cnn/infer", "image", image, "logits")
    statuses: dict[str, int] = {}
    try:
        with LocalServe(config, log_path=work / "serve.log"):
            capacity = closed_load(request, 16, 5.0)["rps"]
            rate = 0.5 * capacity
            print(f"stable alone: {capacity:.0f} req/s closed loop at c=16; load {rate:.0f} req/s", file=sys.stderr)
            shadow = shadow_cost(request, rate, window_s, pairs, statuses)
            print(
                f"shadow 100%: p50 x{shadow['p50_ratio_median']:.3f}, "
                f"throughput x{shadow['throughput_ratio_median']:.3f}",
                file=sys.stderr,
            )
            bad = bad_candidate(request, rate, statuses)
            print(f"bad candidate: {bad['state']} after {bad['intervals_to_rollback']} intervals", file=sys.stderr)
            moves = transitions(request, rate, statuses)
    finally:
        shutil.rmtree(work / "repo", ignore_errors=True)
    report = {
        "benchmark": "rollout",
        "machine": machine.describe(),
        "model": "cnn",
        "stable_capacity_rps": capacity,
        "interval_s": INTERVAL_S,
        "failure_limit": FAILURE_LIMIT,
        "min_requests": MIN_REQUESTS,
        "shadow": shadow,
        "bad_candidate": bad,
        "transitions": moves,
        "statuses": statuses,
        "non_200": sum(v for k, v in statuses.items() if k != "200"),
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "rollout.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"non-200 responses through every phase: {report['non_200']} ({statuses})", file=sys.stderr)
    return report


def render(data: dict) -> list[str]:
    shadow, bad, moves = data["shadow"], data["bad_candidate"], data["transitions"]
    limit = data["failure_limit"] + targets.ROLLBACK_EXTRA_INTERVALS
    cost = targets.SHADOW_COST
    steps = ", ".join(f"{s['step']} ({s['state']})" for s in moves["steps"])
    canary = ", ".join(f"{i['weight']:g} % {i['outcome']}" for i in moves["canary_intervals"])
    return [
        "## Model updates: shadow cost, automatic rollback, transitions",
        "",
        machine_line(data["machine"]),
        "",
        f"Command: `python -m benchmarks rollout`. cnn v1 stable, one replica; open loop, Poisson, at "
        f"{shadow['rate_rps']:.0f} req/s (half of the {data['stable_capacity_rps']:.0f} req/s the stable path "
        f"sustains alone, closed loop at c=16). Shadow: {shadow['pairs']} pairs of {shadow['window_s']:g} s windows "
        "without and with shadow 100 % to an identical v2, alternating which runs first; the medians of the "
        f"pairs' on/off ratios. Rollback: canary to a bad v3 (classifier rows permuted) judged every "
        f"{data['interval_s']:g} s, failure_limit {data['failure_limit']}, min_requests {data['min_requests']}.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        table_row(
            f"shadow 100 % costs stable's p50 at most {cost:.0%}",
            f"x{shadow['p50_ratio_median']:.3f} (median of {shadow['pairs']} pairs)",
            shadow["p50_ratio_median"] <= 1 + cost,
        ),
        table_row(
            f"... and its throughput at most {cost:.0%}",
            f"x{shadow['throughput_ratio_median']:.3f}; {shadow['mirrored_share_median']:.0%} of requests mirrored",
            shadow["throughput_ratio_median"] >= 1 - cost,
        ),
        table_row(
            f"a bad candidate rolled back within failure_limit + {targets.ROLLBACK_EXTRA_INTERVALS} = {limit} "
            "intervals",
            f"{bad['state']} after {bad['intervals_to_rollback']} intervals ({bad['seconds_to_rollback']:.1f} s): "
            f"{bad['reason']}",
            bad["state"] == "rolled_back" and bad["intervals_to_rollback"] <= limit,
        ),
        table_row(
            "0 non-200 responses through every transition",
            f"{data['non_200']} of {sum(data['statuses'].values())} (statuses {data['statuses']})",
            data["non_200"] == 0,
        ),
        "",
        f"Stable's p50 in the shadow-off windows {_median_p50(shadow, False):.2f} ms, shadow-on "
        f"{_median_p50(shadow, True):.2f} ms: at 100 % every request also runs the model a second time on the "
        f"same {data['machine']['cores']} cores, which the replica, the ingress and the load generator share.",
        "",
        f"Transitions under load: {steps}. The canary to the identical v2 was judged: {canary}.",
        "",
    ]


def _median_p50(shadow: dict, on: bool) -> float:
    return statistics.median(w["p50_ms"] for w in shadow["windows"] if w["shadow"] is on)


def add_parser(sub) -> None:
    p = sub.add_parser("rollout", help="shadow cost, a bad candidate rolled back, transitions without errors")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--window", type=float, default=8.0, help="seconds per shadow-on or shadow-off window")
    p.add_argument("--pairs", type=int, default=5, help="shadow on/off window pairs (at least 5)")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))


def run(args) -> None:
    if args.pairs < 5:
        raise SystemExit("--pairs: at least 5 on/off pairs, so the machine's drift cancels in the median")
    measure(args.repository, args.results, window_s=args.window, pairs=args.pairs)
