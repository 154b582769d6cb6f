"""`python -m benchmarks overhead`: what a request costs the replica, by component (issue 32).

One trtserve application serving cnn and minilm (one replica, the default ingress) gets an open loop (Poisson,
seeded by pair) at a fixed rate, one workload at a time:
- `cnn-json`: one 1x3x32x32 FP32 image per request as KServe v2 JSON, 250 req/s;
- `cnn-binary`: the same image as binary tensor data, the output asked for as binary, 250 req/s;
- `minilm-text`: one sentence per request (BYTES JSON, the 300 reference sentences in turn), 60 req/s.
Each window runs after a warm-up at its rate that it does not count. Per window: the replica process's CPU
(user + system time of all its threads, from /proc through psutil) per request answered; the engine's share
and the rest of an engine call (Triton's compute_infer / compute_input / compute_output from
/v2/models/M/stats, wall time in the replica, per request); rows per engine call; the achieved rate; p50/p99
from each request's scheduled time.

Beside trtserve, in the current tree's servers, the same ingress serves benchmarks/ray_floor_app.py under
/floor: a Ray Serve deployment that reads the body and answers a fixed response, nothing else. The same
workloads against it give Ray Serve's own CPU per request (its replica process), so that the replica's CPU
splits into Ray Serve's part and trtserve's (replica less floor). Nothing on Ray Serve's HTTP path can cost
less than floor + engine.

The yardstick is the raw engine in this process, before any server starts: ONNX Runtime, batch 1, one intra-op
thread, its CPU per call (time.process_time); for minilm the served model's tokenizer on one sentence included.

The previous release (`--baseline REV`, checked out in a git worktree) is served from its own tree by the same
venv, in windows that alternate with the current tree's (`--pairs` pairs, which arm runs first alternating).
One server at a time, stopped before the other starts: on a 2-core machine an idle Ray instance beside the
measured one (its GCS, raylet, dashboard, HAProxy) would take CPU from whichever replica is measured. The median
of the pairs' current/baseline ratios of CPU per request is reported per workload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import yaml

from benchmarks import ray_floor_app, targets
from benchmarks.harness import ROOT, arm_order, binary_request, ensure_model, json_request
from benchmarks.rendering import machine_line, table_row
from runtime.capacity.load_generator import open_loop
from runtime.capacity.local_server import HOST, PORT, serve_config
from runtime.capacity.server_stats import model_stats, rows_per_call
from runtime.diagnostics import machine
from runtime.serve.launcher import READY_TIMEOUT_S, LocalServe

BASELINE = "9f639d3"  # the release before issue 32's work
WARMUP_S = 2.0  # at the window's rate before each window, not counted (shorter windows: as long as the window)
IDLE_S = 3.0  # the replica left alone after its windows: its background CPU
YARDSTICK_S = 3.0  # the raw engine called back to back, per model
APP = "bench"  # serve_config's application name: how the replica is found
ARMS = ("current", "baseline")


@dataclass(frozen=True)
class Workload:
    name: str
    model: str
    rate: float
    what: str
    target: float  # replica CPU per request at most this many times the raw engine's CPU per call


WORKLOADS = (
    Workload("cnn-json", "cnn", 250.0, "cnn, KServe v2 JSON", targets.OVERHEAD_CNN_JSON),
    Workload("cnn-binary", "cnn", 250.0, "cnn, binary tensors", targets.OVERHEAD_CNN_BINARY),
    Workload("minilm-text", "minilm", 60.0, "MiniLM, one sentence as BYTES JSON", targets.OVERHEAD_MINILM_TEXT),
)


def process_cpu_s(process: psutil.Process) -> float:
    """The process's CPU seconds so far, all its threads (the kernel's utime + stime)."""
    times = process.cpu_times()
    return times.user + times.system


def cpu_ms_per_request(summary: dict, cpu_s: float) -> float | None:
    """CPU milliseconds per request answered 200 over a window (None when none was)."""
    answered = summary["statuses"].get("200", 0)
    return round(1e3 * cpu_s / answered, 4) if answered else None


def window_figures(summary: dict, cpu_s: float, before: dict, after: dict) -> dict:
    """One window's figures: the open loop's `summary`, the replica's CPU seconds over it, and the model's
    statistics read before and after it. CPU and engine times are per request answered 200."""
    rows = after["inference_count"] - before["inference_count"]

    def per_row_ms(stage: str) -> float | None:
        ns = after["inference_stats"][stage]["ns"] - before["inference_stats"][stage]["ns"]
        return round(ns / rows / 1e6, 4) if rows else None

    return {
        "cpu_ms_per_request": cpu_ms_per_request(summary, cpu_s),
        "engine_ms_per_request": per_row_ms("compute_infer"),
        "input_ms_per_request": per_row_ms("compute_input"),
        "output_ms_per_request": per_row_ms("compute_output"),
        "rows_per_engine_call": round(rows_per_call(before, after), 2),
        "achieved_rps": summary["achieved_rps"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "requests": summary["requests"],
        "statuses": summary["statuses"],
    }


def arm_summary(windows: list[dict]) -> dict:
    """The median over an arm's windows of each figure."""
    keys = [k for k, v in windows[0].items() if isinstance(v, int | float) and k != "pair"]
    return {
        k: round(statistics.median(w[k] for w in windows if w[k] is not None), 4)
        for k in keys
        if any(w[k] is not None for w in windows)
    }


def paired_ratios(windows: list[dict], key: str = "cpu_ms_per_request") -> list[float]:
    """current / baseline of `key` in each pair that has both arms, in pair order."""
    by_pair: dict[int, dict[str, float]] = {}
    for w in windows:
        if w[key] is not None:
            by_pair.setdefault(w["pair"], {})[w["arm"]] = w[key]
    return [round(p["current"] / p["baseline"], 4) for _, p in sorted(by_pair.items()) if len(p) == 2]


def engine_cpu_ms_per_call(version_dir: Path, texts: list[str] | None, seconds: float = YARDSTICK_S) -> float:
    """The raw engine's CPU per call in this process: ONNX Runtime, batch 1, one intra-op thread; with `texts`,
    each call tokenizes one of them first with the version's own preprocessing (the served model's)."""
    from runtime import load_engine
    from runtime.engine.backends import EngineOptions
    from runtime.engine.manifest import read_manifest
    from runtime.engine.preprocessing import load

    image = {"image": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    tokenize = load(version_dir, read_manifest(version_dir)) if texts else None
    with load_engine(version_dir, "onnxruntime", options=EngineOptions(intra_op_threads=1)) as engine:

        def call(i: int) -> None:
            feed = tokenize(np.array([texts[i % len(texts)]], dtype=object)) if tokenize else image
            engine.infer(feed)

        for i in range(20):
            call(i)
        calls, cpu_started = 0, time.process_time()
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            call(calls)
            calls += 1
        return round(1e3 * (time.process_time() - cpu_started) / calls, 4)


def on_port(request: bytes, port: int) -> bytes:
    """A request the harness built for HOST:PORT, addressed to HOST:`port` instead."""
    return request.replace(f"Host: {HOST}:{PORT}\r\n".encode(), f"Host: {HOST}:{port}\r\n".encode(), 1)


def workload_requests(port: int, texts: list[str]) -> dict[str, list[bytes]]:
    """Each workload's requests, sent in turn: one image, or one of `texts` per request."""
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    cnn, minilm = "/v2/models/cnn/infer", "/v2/models/minilm/infer"
    requests = {
        "cnn-json": [json_request(cnn, {"image": image})],
        "cnn-binary": [binary_request(cnn, "image", image, "logits")],
        "minilm-text": [json_request(minilm, {"text": np.array([t], dtype=object)}) for t in texts],
    }
    return {name: [on_port(r, port) for r in rs] for name, rs in requests.items()}


@contextlib.contextmanager
def served_from(tree: Path, config: Path, log: Path) -> Iterator[LocalServe]:
    """trtserve as source tree `tree` has it, serving `config`: `serve run` started in `tree` with `tree` first
    on PYTHONPATH. Both, because Ray puts the driver's working directory on its workers' import path (ahead
    of the venv's editable install of the checkout, which PYTHONPATH also overrides)."""
    pythonpath = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)
    local = LocalServe(config, log_path=log, env={"PYTHONPATH": pythonpath})
    try:
        with contextlib.chdir(tree):
            local.launch()
        local.wait_ready(READY_TIMEOUT_S)
        yield local
    finally:
        local.stop()


def measure_window(
    local: LocalServe, replica: psutil.Process, workload: Workload, requests: list[bytes], window_s: float, seed: int
) -> dict:
    """Warm up at the workload's rate, then one window: its figures (`window_figures`)."""
    _warm_up(local, workload, requests, window_s, seed)
    before = model_stats(local.url, workload.model)
    summary, cpu_s = _cpu_window(local, replica, workload, requests, window_s, seed)
    return window_figures(summary, cpu_s, before, model_stats(local.url, workload.model))


def measure_floor_window(
    local: LocalServe, replica: psutil.Process, workload: Workload, requests: list[bytes], window_s: float, seed: int
) -> dict:
    """The same warm-up and window against the Ray Serve floor: its replica's CPU per request answered."""
    requests = [to_floor(r) for r in requests]
    _warm_up(local, workload, requests, window_s, seed)
    summary, cpu_s = _cpu_window(local, replica, workload, requests, window_s, seed)
    return {
        "cpu_ms_per_request": cpu_ms_per_request(summary, cpu_s),
        "achieved_rps": summary["achieved_rps"],
        "statuses": summary["statuses"],
    }


def _warm_up(local: LocalServe, workload: Workload, requests: list[bytes], window_s: float, seed: int) -> None:
    """The workload's rate, not counted: as long as the window, at most WARMUP_S."""
    asyncio.run(open_loop(HOST, local.port, requests, workload.rate, min(WARMUP_S, window_s), seed=seed))


def _cpu_window(
    local: LocalServe, replica: psutil.Process, workload: Workload, requests: list[bytes], window_s: float, seed: int
) -> tuple[dict, float]:
    """One window at the workload's rate: the open loop's summary and `replica`'s CPU seconds over it."""
    cpu_before = process_cpu_s(replica)
    summary = asyncio.run(open_loop(HOST, local.port, requests, workload.rate, window_s, seed=seed)).summary()
    return summary, process_cpu_s(replica) - cpu_before


def to_floor(request: bytes) -> bytes:
    """A request the harness built for trtserve, addressed to the floor application's prefix instead."""
    method, _, rest = request.partition(b" ")
    return method + b" /" + ray_floor_app.APP.encode() + rest if rest.startswith(b"/") else request


def _one_replica(local: LocalServe, app: str, deployment: str, log: Path) -> psutil.Process:
    replicas = local.replicas(app, deployment)
    if len(replicas) != 1:
        raise RuntimeError(f"expected one replica of {app}:{deployment}, found {len(replicas)} ({log})")
    return replicas[0]


def measure_server(
    tree: Path, config: Path, log: Path, requests: dict[str, list[bytes]], window_s: float, seed: int, floor: bool
) -> tuple[dict[str, dict], float, dict[str, dict]]:
    """One server from `tree`: a window of every workload, the replica's idle CPU in ms per second, and with
    `floor` a window of every workload against the Ray Serve floor served beside it."""
    with served_from(tree, config, log) as local:
        replica = _one_replica(local, APP, "trtserve", log)
        windows = {w.name: measure_window(local, replica, w, requests[w.name], window_s, seed) for w in WORKLOADS}
        idle_before = process_cpu_s(replica)
        time.sleep(IDLE_S)
        idle = round(1e3 * (process_cpu_s(replica) - idle_before) / IDLE_S, 2)
        floors = {}
        if floor:
            floor_replica = _one_replica(local, ray_floor_app.APP, "floor", log)
            for w in WORKLOADS:
                floors[w.name] = measure_floor_window(local, floor_replica, w, requests[w.name], window_s, seed)
        return windows, idle, floors


def working_tree() -> dict:
    """What the current arm serves: this checkout's commit, and its uncommitted changes under runtime/."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    status = subprocess.run(
        [*git, "status", "--porcelain", "--", "runtime"], capture_output=True, text=True, check=True
    )
    return {"commit": commit, "uncommitted": [line[3:] for line in status.stdout.splitlines()]}


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[tuple[Path, str]]:
    """`rev` checked out (detached) in a temporary git worktree of this repository, removed after: its
    directory and full commit id."""
    git = ["git", "-C", str(ROOT)]
    found = subprocess.run([*git, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], capture_output=True)
    if found.returncode != 0:
        raise SystemExit(f"overhead: --baseline {rev}: not a commit of {ROOT} (or use --no-baseline)")
    commit = found.stdout.decode().strip()
    directory = Path(tempfile.mkdtemp(prefix="trtserve-baseline-"))
    subprocess.run([*git, "worktree", "add", "--detach", "--quiet", str(directory), commit], check=True)
    try:
        yield directory, commit
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(directory)], check=True)


def measure(
    repository: Path,
    results: Path,
    window_s: float = 10.0,
    pairs: int = 5,
    baseline: str | None = BASELINE,
    port: int = PORT,
) -> dict:
    from convert.zoo.minilm import reference_texts

    current = working_tree()
    repository = repository.resolve()
    cnn, _ = ensure_model(repository, ROOT / "configs/models/cnn.yaml")
    minilm, _ = ensure_model(repository, ROOT / "configs/models/minilm.yaml")
    texts = reference_texts()
    # Before any server starts: this process alone on the machine.
    yardstick = {"cnn": engine_cpu_ms_per_call(cnn, None), "minilm": engine_cpu_ms_per_call(minilm, texts)}
    print(f"raw engine CPU per call (batch 1, one intra-op thread): {yardstick}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="trtserve-overhead-"))
    args = {"repository": str(repository), "models": [{"name": "cnn"}, {"name": "minilm"}]}
    # The baseline tree predates the floor application: only the current tree's servers hold it.
    configs = {
        "current": floor_config(work / "current.yaml", args, port),
        "baseline": serve_config(work / "baseline.yaml", args, port=port),
    }
    requests = workload_requests(port, texts)
    windows: dict[str, list[dict]] = {w.name: [] for w in WORKLOADS}
    floors: dict[str, list[dict]] = {w.name: [] for w in WORKLOADS}
    idle: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        trees = {"current": ROOT}
        commit = None
        if baseline is not None:
            trees["baseline"], commit = stack.enter_context(worktree(baseline))
        for pair in range(pairs):
            for arm in arm_order(pair, tuple(trees)):
                log = work / f"{arm}-{pair}.log"
                by_workload, idle_ms_per_s, floor = measure_server(
                    trees[arm], configs[arm], log, requests, window_s, pair, floor=arm == "current"
                )
                idle.setdefault(arm, []).append(idle_ms_per_s)
                for name, figures in floor.items():
                    floors[name].append({"pair": pair, **figures})
                    print(
                        f"pair {pair} Ray Serve floor {name}: {figures['cpu_ms_per_request']} ms/request",
                        file=sys.stderr,
                    )
                for name, figures in by_workload.items():
                    windows[name].append({"pair": pair, "arm": arm, **figures})
                    print(
                        f"pair {pair} {arm} {name}: replica CPU {figures['cpu_ms_per_request']} ms/request, engine "
                        f"{figures['engine_ms_per_request']} ms/request, {figures['rows_per_engine_call']} rows/call, "
                        f"{figures['achieved_rps']} req/s, p99 {figures['p99_ms']} ms",
                        file=sys.stderr,
                    )
    report = {
        "benchmark": "overhead",
        "machine": machine.describe(),
        "window_s": window_s,
        "warmup_s": min(WARMUP_S, window_s),
        "pairs": pairs,
        "current": current,
        "baseline": {"rev": baseline, "commit": commit} if baseline is not None else None,
        "engine_cpu_ms_per_call": yardstick,
        "idle_cpu_ms_per_s": idle,
        "workloads": {w.name: summarize(w, windows[w.name], yardstick[w.model], floors[w.name]) for w in WORKLOADS},
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def floor_config(path: Path, args: dict, port: int) -> Path:
    """serve_config's application, and the Ray Serve floor beside it under its own prefix."""
    serve_config(path, args, port=port)
    doc = yaml.safe_load(path.read_text())
    floor = {
        "name": ray_floor_app.APP,
        "route_prefix": f"/{ray_floor_app.APP}",
        "import_path": "benchmarks.ray_floor_app:build",
    }
    doc["applications"].append({**floor, "args": {}})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def summarize(workload: Workload, windows: list[dict], engine_ms: float, floors: list[dict] | None = None) -> dict:
    """A workload's windows, each arm's medians and its CPU per request against the raw engine's per call, the
    pairs' current/baseline ratios of CPU per request with their median, and the Ray Serve floor's windows
    with the median of their CPU per request."""
    arms = {}
    for arm in ARMS:
        if any(w["arm"] == arm for w in windows):
            arms[arm] = arm_summary([w for w in windows if w["arm"] == arm])
            cpu = arms[arm].get("cpu_ms_per_request")
            arms[arm]["cpu_vs_engine"] = round(cpu / engine_ms, 3) if cpu else None
    ratios = paired_ratios(windows)
    return {
        "model": workload.model,
        "rate": workload.rate,
        "what": workload.what,
        "target_vs_engine": workload.target,
        "engine_cpu_ms_per_call": engine_ms,
        "arms": arms,
        "vs_baseline": {"ratios": ratios, "median": round(statistics.median(ratios), 4)} if ratios else None,
        "windows": windows,
        "floor": _floor_summary(floors or []),
    }


def _floor_summary(floors: list[dict]) -> dict | None:
    cpu = [f["cpu_ms_per_request"] for f in floors if f["cpu_ms_per_request"] is not None]
    if not cpu:
        return None
    return {"cpu_ms_per_request": round(statistics.median(cpu), 4), "windows": floors}


def render(data: dict) -> list[str]:
    engine = data["engine_cpu_ms_per_call"]
    baseline = data["baseline"]
    lines = [
        "## Overhead: what a request costs the replica",
        "",
        machine_line(data["machine"]),
        "",
        f"Command: `python -m benchmarks overhead`. One replica serving cnn and minilm (default ingress), an open "
        f"loop (Poisson) at a fixed rate per workload, {data['window_s']:.0f} s windows after {data['warmup_s']:.0f} s "
        f"of warm-up, {data['pairs']} per arm; figures are medians over the windows. Replica CPU: utime + stime of "
        "the replica process (all threads) per request answered. The yardstick: the raw engine in the benchmark's "
        "process (ONNX Runtime, batch 1, one intra-op thread), CPU per call: cnn "
        f"{engine['cnn']:.3f} ms, MiniLM {engine['minilm']:.3f} ms with its tokenizer on one sentence. Current: "
        f"{_current(data['current'])}.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for w in data["workloads"].values():
        current = w["arms"]["current"]
        cpu, ratio = current.get("cpu_ms_per_request"), current["cpu_vs_engine"]
        lines.append(
            table_row(
                f"{w['what']}, {w['rate']:.0f} req/s: replica CPU per request <= {w['target_vs_engine']:g}x the raw "
                "engine's CPU per call",
                f"{cpu:.3f} vs {engine[w['model']]:.3f} ms = {ratio:.2f}x" if ratio else "no answers",
                ratio is not None and ratio <= w["target_vs_engine"],
            )
        )
    lines += [
        "",
        "By component, per request (the engine, stacking requests into its calls and what follows a call: wall "
        "time in the replica, from /v2/models/M/stats):",
        "",
        "| workload | tree | replica CPU ms | x raw engine | engine ms | stacking ms | after the engine ms "
        "| rows per engine call | req/s | p50 ms | p99 ms | CPU vs baseline |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, w in data["workloads"].items():
        for arm, s in w["arms"].items():
            versus = w["vs_baseline"]
            cells = [
                name,
                _tree(arm, baseline),
                _figure(s.get("cpu_ms_per_request"), ".3f"),
                _figure(s["cpu_vs_engine"], ".2f", "x"),
                *(_figure(s.get(f"{k}_ms_per_request"), ".3f") for k in ("engine", "input", "output")),
                _figure(s["rows_per_engine_call"], ".2f"),
                _figure(s["achieved_rps"], ".0f"),
                _figure(s["p50_ms"], ".2f"),
                _figure(s["p99_ms"], ".2f"),
                _figure(versus["median"], ".2f", "x") if arm == "current" and versus else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += _floor_table(data)
    errors = {
        f"{name} {_tree(w['arm'], baseline)} pair {w['pair']}": w["statuses"]
        for name, workload in data["workloads"].items()
        for w in workload["windows"]
        if set(w["statuses"]) != {"200"}
    }
    idle = ", ".join(
        f"{_tree(arm, baseline)} {statistics.median(v):.1f}" for arm, v in data["idle_cpu_ms_per_s"].items()
    )
    lines += [
        "",
        f"Replica CPU while idle, ms per second (median): {idle}. Answers other than 200: {errors or 'none'}.",
    ]
    if baseline:
        lines.append(
            f"CPU vs baseline: the median of {data['pairs']} pairs' current/baseline ratios of replica CPU per "
            "request, the two servers started in turn (one at a time), which runs first alternating."
        )
    return [*lines, ""]


def _floor_table(data: dict) -> list[str]:
    """The current replica's CPU per request split into Ray Serve's (the floor application's replica, same
    ingress and requests) and trtserve's; and floor + raw engine: what no Ray Serve HTTP deployment gets under."""
    workloads = {n: w for n, w in data["workloads"].items() if w.get("floor")}
    if not workloads:
        return []
    lines = [
        "",
        "Where the current replica's CPU per request goes: Ray Serve's own part is what the same requests cost "
        "benchmarks/ray_floor_app.py (reads the body, answers a fixed response), served beside trtserve behind "
        "the same ingress; floor + raw engine is the least any deployment on Ray Serve's HTTP path could cost.",
        "",
        "| workload | replica CPU ms | Ray Serve floor ms | trtserve beyond the floor ms | raw engine ms "
        "| floor + raw engine, x raw engine |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, w in workloads.items():
        cpu, floor = w["arms"]["current"].get("cpu_ms_per_request"), w["floor"]["cpu_ms_per_request"]
        engine = w["engine_cpu_ms_per_call"]
        cells = [
            name,
            _figure(cpu, ".3f"),
            f"{floor:.3f}",
            _figure(cpu - floor if cpu is not None else None, ".3f"),
            f"{engine:.3f}",
            f"{(floor + engine) / engine:.2f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _figure(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _current(current: dict) -> str:
    changed = len(current["uncommitted"])
    return f"commit {current['commit'][:7]}" + (
        f" with uncommitted changes to {changed} file(s) under runtime/" if changed else ""
    )


def _tree(arm: str, baseline: dict | None) -> str:
    return f"baseline {baseline['rev']}" if arm == "baseline" and baseline else "current"


def add_parser(sub) -> None:
    p = sub.add_parser("overhead", help="replica CPU per request by component, against the raw engine and a baseline")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--window", type=float, default=10.0, help="seconds measured per workload and server")
    p.add_argument("--pairs", type=int, default=5, help="windows per arm (current and baseline alternating)")
    p.add_argument("--baseline", default=BASELINE, help=f"the revision to compare with (default {BASELINE})")
    p.add_argument("--no-baseline", action="store_true", help="measure the current tree only")
    p.add_argument("--port", type=int, default=PORT, help="the server's HTTP port")


def run(args) -> None:
    if args.pairs < 1:
        raise SystemExit("--pairs: at least 1")
    report = measure(
        args.repository, args.results, args.window, args.pairs, None if args.no_baseline else args.baseline, args.port
    )
    engine = report["engine_cpu_ms_per_call"]
    print(f"raw engine CPU per call: cnn {engine['cnn']:.3f} ms, minilm {engine['minilm']:.3f} ms (tokenizer included)")
    for name, w in report["workloads"].items():
        for arm, s in w["arms"].items():
            print(
                f"{name} {arm}: replica CPU {s.get('cpu_ms_per_request')} ms/request "
                f"(x{s['cpu_vs_engine']} the raw engine's per call), engine "
                f"{s.get('engine_ms_per_request')} ms/request, {s['rows_per_engine_call']} rows/call, "
                f"{s['achieved_rps']} req/s, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms"
            )
        if w["floor"]:
            print(f"{name}: Ray Serve floor {w['floor']['cpu_ms_per_request']} ms/request (current tree's server)")
        if w["vs_baseline"]:
            versus = w["vs_baseline"]
            print(f"{name}: current/baseline CPU per request, median x{versus['median']} of {versus['ratios']}")
    print(f"replica idle CPU ms/s: {report['idle_cpu_ms_per_s']}")
    print(args.results / "overhead.json")
