"""`python -m benchmarks compare`: one workload against the baselines, side by side in one run.

Workload: the `cnn` demo model, one 1x3x32x32 FP32 image per request as KServe v2 JSON, closed loop at
concurrency 1 and 32 over loopback. Contenders:
- raw engine: ONNX Runtime in this process, no server (batch 1, and at the batch size trtserve formed);
- torch eager in this process, batch 1 (the model rebuilt from its recorded factory);
- FastAPI + uvicorn + ONNX Runtime, one process, no batching (benchmarks/fastapi_app.py), plain (as the
  tutorials write it: the targets' contender) and hand-tuned;
- naive Ray Serve + ONNX Runtime (benchmarks/naive_app.py) with Ray's default ingress;
- trtserve (HAProxy ingress, ONNX Runtime backend), and trtserve with the `torch` backend.
Each server is started fresh and stopped before the next. Ratios are requests/s against trtserve (ONNX
Runtime, HAProxy) at the same concurrency; in-process rows against its concurrency-32 figure.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import fastapi_app, targets
from benchmarks.harness import ROOT, closed_load, ensure_model, json_request
from benchmarks.rendering import machine_line, table_row
from runtime import load_engine
from runtime.capacity.local_server import HOST, PORT, server
from runtime.capacity.server_stats import model_stats, rows_per_call
from runtime.diagnostics import machine

FASTAPI = "plain FastAPI + uvicorn + ONNX Runtime"  # as the tutorials write it: the targets' contender
FASTAPI_TUNED = "hand-tuned FastAPI + uvicorn + ONNX Runtime"
WORKLOAD = "cnn, one 1x3x32x32 FP32 image per request, KServe v2 JSON, closed loop"


def _in_process(version_dir: Path, backend: str, batch: int, seconds: float) -> dict:
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    with load_engine(version_dir, backend) as engine:
        for _ in range(20):
            engine.infer({"image": x})
        times = []
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            started = time.perf_counter()
            engine.infer({"image": x})
            times.append(time.perf_counter() - started)
    ms = np.array(times) * 1e3
    return {
        "rps": round(batch * len(times) / float(np.sum(times)), 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "batch": batch,
    }


def measure(repository: Path, results: Path, duration_s: float = 8.0) -> dict:
    repository = repository.resolve()
    cnn, _ = ensure_model(repository, ROOT / "configs/models/cnn.yaml")
    work = Path(tempfile.mkdtemp(prefix="trtserve-compare-"))
    image = {"image": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    rows: dict[str, dict] = {}
    naive = ("naive Ray Serve + ONNX Runtime", "benchmarks.naive_app:build", {"model": str(cnn / "model.onnx")})
    torch_models = {"models": [{"name": "cnn", "backend": "torch"}]}
    servers = (
        (*naive, "proxy"),
        (*naive, "haproxy"),
        ("trtserve (onnxruntime)", "runtime.serve.app:build_app", {"models": [{"name": "cnn"}]}, "haproxy"),
        ("trtserve (torch eager)", "runtime.serve.app:build_app", torch_models, "haproxy"),
    )
    with fastapi_app.serving(cnn / "model.onnx", HOST, PORT, work / "fastapi.log"):
        for label, path in ((FASTAPI, "/v2/models/cnn/infer"), (FASTAPI_TUNED, "/tuned/v2/models/cnn/infer")):
            request = json_request(path, image)
            c1, c32 = closed_load(request, 1, duration_s), closed_load(request, 32, duration_s)
            rows[f"{label} [uvicorn]"] = {"ingress": "uvicorn", "c1": c1, "c32": c32}
            print(f"{label}: c1 {c1['rps']} req/s, c32 {c32['rps']} req/s", file=sys.stderr)
    trtserve_batch = 1
    for label, import_path, args, ingress in servers:
        if import_path.startswith("runtime."):
            args = {"repository": str(repository), **args}
        path = "/" if "naive" in import_path else "/v2/models/cnn/infer"
        with server(work, f"contender-{len(rows)}", args, import_path, ingress) as running:
            request = json_request(path, image)
            c1 = closed_load(request, 1, duration_s)
            before = model_stats(running.url, "cnn") if path != "/" else None
            c32 = closed_load(request, 32, duration_s)
            entry = {"ingress": ingress, "c1": c1, "c32": c32}
            if before is not None:
                entry["rows_per_engine_call"] = round(rows_per_call(before, model_stats(running.url, "cnn")), 2)
                if label == "trtserve (onnxruntime)":
                    trtserve_batch = max(1, round(entry["rows_per_engine_call"]))
        rows[f"{label} [{ingress}]"] = entry
        print(f"{label}: c1 {c1['rps']} req/s, c32 {c32['rps']} req/s", file=sys.stderr)
    rows["raw engine, ONNX Runtime, batch 1"] = {"in_process": _in_process(cnn, "onnxruntime", 1, duration_s)}
    rows[f"raw engine, ONNX Runtime, batch {trtserve_batch}"] = {
        "in_process": _in_process(cnn, "onnxruntime", trtserve_batch, duration_s)
    }
    rows["raw torch eager, batch 1"] = {"in_process": _in_process(cnn, "torch", 1, duration_s)}
    ours = rows["trtserve (onnxruntime) [haproxy]"]
    table = []
    for label, entry in rows.items():
        if "in_process" in entry:
            best = entry["in_process"]
            table.append({"contender": label, "where": "in process, no HTTP", **_figures(best, ours["c32"]["rps"])})
        else:
            for c in ("c32", "c1"):
                where = f"HTTP, {entry['ingress']} ingress, concurrency {c[1:]}"
                table.append({"contender": label, "where": where, **_figures(entry[c], ours[c]["rps"])})
    report = {
        "benchmark": "compare",
        "machine": machine.describe(),
        "workload": WORKLOAD,
        "duration_s": duration_s,
        "runs": rows,
        "table": table,
    }
    results.mkdir(parents=True, exist_ok=True)
    (results / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _figures(summary: dict, reference: float | None) -> dict:
    return {
        "rps": summary["rps"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "vs_trtserve": round(summary["rps"] / reference, 2) if reference else None,
    }


def render(data: dict) -> list[str]:
    lines = [
        "## Compare: one workload, every contender",
        "",
        machine_line(data["machine"]),
        "",
        f"Command: `python -m benchmarks compare`. Workload: {data['workload']}; {data['duration_s']:.0f} s per "
        "point. Ratios: requests/s against trtserve (ONNX Runtime, HAProxy) at the same concurrency; in-process "
        "rows (the engine called back to back, no HTTP) against its concurrency 32.",
        "",
        *_fastapi_targets(data["runs"]),
        "| contender | where | req/s | p50 ms | p99 ms | vs trtserve |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in data["table"]:
        ratio = f"{row['vs_trtserve']:.2f}x" if row["vs_trtserve"] is not None else "-"
        lines.append(
            f"| {row['contender']} | {row['where']} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {ratio} |"
        )
    return [*lines, ""]


def _fastapi_targets(runs: dict) -> list[str]:
    """trtserve (ONNX Runtime, HAProxy) judged against the FastAPI contender, where the run has one."""
    fastapi, ours = runs.get(f"{FASTAPI} [uvicorn]"), runs.get("trtserve (onnxruntime) [haproxy]")
    if fastapi is None or ours is None:
        return []
    rps = ours["c32"]["rps"] / fastapi["c32"]["rps"]
    p99 = ours["c32"]["p99_ms"] / fastapi["c32"]["p99_ms"]
    p50 = ours["c1"]["p50_ms"] / fastapi["c1"]["p50_ms"]
    return [
        "| target (trtserve against FastAPI + uvicorn + ONNX Runtime) | measured | met |",
        "|---|---|---|",
        table_row(
            f"concurrency 32: >= {targets.VS_FASTAPI_C32_THROUGHPUT:g}x its requests/s",
            f"{ours['c32']['rps']:.0f} vs {fastapi['c32']['rps']:.0f} = {rps:.2f}x",
            rps >= targets.VS_FASTAPI_C32_THROUGHPUT,
        ),
        table_row(
            f"concurrency 32: p99 <= {targets.VS_FASTAPI_C32_P99:g}x its p99",
            f"{ours['c32']['p99_ms']:.2f} vs {fastapi['c32']['p99_ms']:.2f} ms = {p99:.2f}x",
            p99 <= targets.VS_FASTAPI_C32_P99,
        ),
        table_row(
            f"concurrency 1: p50 <= {targets.VS_FASTAPI_C1_P50:g}x its p50",
            f"{ours['c1']['p50_ms']:.2f} vs {fastapi['c1']['p50_ms']:.2f} ms = {p50:.2f}x",
            p50 <= targets.VS_FASTAPI_C1_P50,
        ),
        "",
    ]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare", help="one workload against raw engine, FastAPI, naive Ray Serve, trtserve, torch eager"
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured per load point")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))


def run(args) -> None:
    report = measure(args.repository, args.results, args.duration)
    for row in report["table"]:
        ratio = f" ({row['vs_trtserve']:.2f}x trtserve)" if row["vs_trtserve"] else ""
        print(
            f"{row['contender']}, {row['where']}: {row['rps']:.0f} req/s{ratio}, "
            f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms"
        )
