"""`python -m benchmarks serving`: the serving targets, measured in one run on this machine. Each server
is started fresh (`local_server.server`), loaded by `load_generator` over loopback, stopped before the
next."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import targets
from benchmarks.harness import ROOT, binary_request, closed_load, ensure_model, json_request
from benchmarks.rendering import machine_line, table_row
from runtime.capacity.local_server import server
from runtime.capacity.server_stats import model_stats
from runtime.diagnostics import machine
from runtime.engine.signature import Signature


def sentences(count: int, seed: int = 0) -> list[str]:
    """A realistic mix: mostly short sentences, a long tail up to the model's 256 tokens."""
    from convert.zoo.minilm import CORPUS

    words = " ".join(CORPUS).split()
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=2.8, sigma=0.8, size=count), 2, 220).astype(int)
    return [" ".join(rng.choice(words, size=n)) for n in lengths]


def raw_engine_throughput(version_dir: Path, signature: Signature, texts: list[str], batch_sizes=(1, 2, 4, 8, 16, 32)):
    """Sentences/s of the engine in-process, tokenizing each batch to its own longest, per batch size.
    ONNX Runtime's own default (spinning worker threads) is kept: it is the faster setting for a process
    that only runs the engine, so the baseline is the strongest one."""
    from tokenizers import Tokenizer

    from runtime.engine.backends import EngineOptions, EngineSpec
    from runtime.engine.backends.onnxruntime import OnnxRuntimeEngine
    from runtime.engine.preprocessing import encode

    tokenizer = Tokenizer.from_file(str(version_dir / "preprocessing/tokenizer/tokenizer.json"))
    out = {}
    spec = EngineSpec(version_dir, signature, "fp32", "model.onnx")
    with OnnxRuntimeEngine(spec, EngineOptions(spin=True)) as engine:
        for b in batch_sizes:
            started = time.perf_counter()
            for i in range(0, len(texts), b):
                engine.infer(encode(tokenizer, texts[i : i + b], 256, ["input_ids", "attention_mask"]))
            out[b] = round(len(texts) / (time.perf_counter() - started), 1)
    return out


def measure(repository: Path, results: Path, duration_s: float = 10.0) -> dict:
    repository = repository.resolve()
    cnn, _ = ensure_model(repository, ROOT / "configs/models/cnn.yaml")
    minilm, minilm_manifest = ensure_model(repository, ROOT / "configs/models/minilm.yaml")
    image224, _ = ensure_model(repository, ROOT / "benchmarks/configs/image224.yaml")
    report: dict = {"benchmark": "serving", "machine": machine.describe(), "duration_s": duration_s}
    work = Path(tempfile.mkdtemp(prefix="trtserve-bench-"))

    # Tiny CNN, JSON, concurrency 1 and 32: naive deployment vs trtserve, behind both ingresses.
    image = {"image": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    cnn_runs = {}
    naive = {"model": str(cnn / "model.onnx")}
    trtserve = {"repository": str(repository), "models": [{"name": "cnn"}]}
    for app, import_path, args, path, ingresses in (
        ("naive", "benchmarks.naive_app:build", naive, "/", ("proxy", "haproxy")),
        ("naive-ray-defaults", "benchmarks.naive_app:build", {**naive, "max_ongoing_requests": 5}, "/", ("proxy",)),
        ("trtserve", "runtime.serve.app:build_app", trtserve, "/v2/models/cnn/infer", ("proxy", "haproxy")),
    ):
        for ingress in ingresses:
            with server(work, f"cnn-{app}", args, import_path, ingress) as running:
                request = json_request(path, image)
                entry = {"c1": closed_load(request, 1, duration_s), "c32": closed_load(request, 32, duration_s)}
                if app == "trtserve" and ingress == "haproxy":
                    report["cold_start_cnn"] = _cold_start(running, "cnn")
            cnn_runs[f"{app}/{ingress}"] = entry
            print(f"cnn {app} {ingress}: {entry}", file=sys.stderr)
    report["cnn_json"] = cnn_runs

    # MiniLM, realistic sentence mix: raw engine (no server running) vs trtserve, text vs pad-to-128.
    texts = sentences(512)
    report["minilm_raw_engine_sentences_per_s"] = raw_engine_throughput(minilm, minilm_manifest.signature, texts)
    from tokenizers import Tokenizer

    from runtime.engine.preprocessing import encode

    tokenizer = Tokenizer.from_file(str(minilm / "preprocessing/tokenizer/tokenizer.json"))
    path = "/v2/models/minilm/infer"
    as_text = [json_request(path, {"text": np.array([t], dtype=object)}) for t in texts]
    padded = [
        json_request(path, encode(tokenizer, [t], 128, ["input_ids", "attention_mask"], pad_to=128)) for t in texts
    ]
    args = {"repository": str(repository), "models": [{"name": "minilm"}]}
    with server(work, "minilm", args, ingress="haproxy") as running:
        report["cold_start_minilm"] = _cold_start(running, "minilm")
        report["minilm_text_mix"] = closed_load(as_text, 32, duration_s)
        stats = model_stats(running.url, "minilm")
        report["minilm_server_compute_ms_per_sentence"] = round(
            stats["inference_stats"]["compute_infer"]["ns"] / stats["inference_count"] / 1e6, 3
        )
        report["minilm_server_rows_per_engine_call"] = round(stats["inference_count"] / stats["execution_count"], 2)
        report["minilm_pad128"] = closed_load(padded, 32, duration_s)
    print(f"minilm: {report['minilm_text_mix']} vs pad128 {report['minilm_pad128']}", file=sys.stderr)

    # 3x224x224 FP32: binary tensors vs JSON, same server.
    big = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    args = {"repository": str(repository), "models": [{"name": "image224"}]}
    with server(work, "image224", args, ingress="haproxy"):
        path = f"/v2/models/{image224.parent.name}/infer"
        report["image224_binary"] = closed_load(binary_request(path, "image", big, "logits"), 8, duration_s)
        report["image224_json"] = closed_load(json_request(path, {"image": big}), 8, duration_s)
    print(f"image224: binary {report['image224_binary']} json {report['image224_json']}", file=sys.stderr)

    results.mkdir(parents=True, exist_ok=True)
    (results / "serving.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _cold_start(running, model: str) -> dict:
    return {
        "ready_s": round(running.ready_after_s, 2),
        "warmup_s": round(model_stats(running.url, model)["warmup_seconds"], 3),
    }


def render(data: dict) -> list[str]:
    cnn = data["cnn_json"]
    naive, naive_ha, ours = cnn["naive/proxy"], cnn["naive/haproxy"], cnn["trtserve/haproxy"]
    raw = {int(k): v for k, v in data["minilm_raw_engine_sentences_per_s"].items()}
    best_batch = max(raw, key=raw.get)
    mix, pad128 = data["minilm_text_mix"]["rows_per_s"], data["minilm_pad128"]["rows_per_s"]
    binary, as_json = data["image224_binary"]["rps"], data["image224_json"]["rps"]
    throughput = ours["c32"]["rps"] / naive["c32"]["rps"]
    p99 = ours["c32"]["p99_ms"] / naive["c32"]["p99_ms"]
    p50_gap = ours["c1"]["p50_ms"] - naive_ha["c1"]["p50_ms"]
    lines = [
        "## Serving against a naive Ray Serve deployment",
        "",
        machine_line(data["machine"]),
        "",
        f"Command: `python -m benchmarks serving` ({data['duration_s']:.0f} s measured per point after 2 s of "
        "warm-up; trtserve behind its default ingress, HAProxy).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        table_row(
            f"tiny CNN, JSON, concurrency 32: >= {targets.CNN_C32_THROUGHPUT_VS_NAIVE:g}x the requests/s of naive "
            "(default ingress)",
            f"{ours['c32']['rps']:.0f} vs {naive['c32']['rps']:.0f} req/s = {throughput:.2f}x",
            throughput >= targets.CNN_C32_THROUGHPUT_VS_NAIVE,
        ),
        table_row(
            f"... with p99 <= {targets.CNN_C32_P99_VS_NAIVE:g}x naive's",
            f"{ours['c32']['p99_ms']:.1f} vs {naive['c32']['p99_ms']:.1f} ms = {p99:.2f}x",
            p99 <= targets.CNN_C32_P99_VS_NAIVE,
        ),
        table_row(
            f"concurrency 1: p50 within {targets.CNN_C1_P50_GAP_MS:g} ms of naive behind the same ingress (HAProxy)",
            f"{ours['c1']['p50_ms']:.2f} vs {naive_ha['c1']['p50_ms']:.2f} ms ({p50_gap:+.2f} ms)",
            p50_gap <= targets.CNN_C1_P50_GAP_MS,
        ),
        table_row(
            f"MiniLM, sentence mix: >= {targets.MINILM_VS_RAW_ENGINE:g}x the raw engine at its best batch size "
            f"({best_batch})",
            f"{mix:.0f} vs {raw[best_batch]:.0f} sentences/s = {mix / raw[best_batch]:.3f}x",
            mix >= targets.MINILM_VS_RAW_ENGINE * raw[best_batch],
        ),
        table_row(
            f"MiniLM, sentence mix: >= {targets.MINILM_VS_PAD128:g}x padding every request to 128 tokens",
            f"{mix:.0f} vs {pad128:.0f} sentences/s = {mix / pad128:.2f}x",
            mix >= targets.MINILM_VS_PAD128 * pad128,
        ),
        table_row(
            f"3x224x224 FP32: binary tensors >= {targets.BINARY_VS_JSON:g}x the requests/s of JSON",
            f"{binary:.0f} vs {as_json:.1f} req/s = {binary / as_json:.1f}x",
            binary >= targets.BINARY_VS_JSON * as_json,
        ),
        "",
        f"MiniLM inside the server: the engine took {data['minilm_server_compute_ms_per_sentence']:.2f} ms a "
        f"sentence ({data['minilm_server_rows_per_engine_call']:.1f} sentences per engine call, from /stats); the "
        f"raw engine, tokenization included, {1e3 / raw[best_batch]:.2f} ms a sentence at batch {best_batch}. "
        "Raw engine sentences/s by batch size: " + ", ".join(f"{b}: {v:.0f}" for b, v in raw.items()) + ".",
        "",
        f"Cold start, `serve run` to ready (Ray start and warm-up included): cnn "
        f"{data['cold_start_cnn']['ready_s']:.1f} s (warm-up {data['cold_start_cnn']['warmup_s']:.2f} s), minilm "
        f"{data['cold_start_minilm']['ready_s']:.1f} s (warm-up {data['cold_start_minilm']['warmup_s']:.2f} s).",
        "",
        "Tiny CNN, JSON, every deployment and ingress:",
        "",
        "| deployment / ingress | c=1 req/s | c=1 p50 ms | c=1 p99 ms | c=32 req/s | c=32 p50 ms | c=32 p99 ms "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, entry in cnn.items():
        c1, c32 = entry["c1"], entry["c32"]
        errors = {k: v for k, v in {**c1["statuses"], **c32["statuses"]}.items() if k != "200"}
        lines.append(
            f"| {name} | {c1['rps']:.0f} | {c1['p50_ms']:.2f} | {c1['p99_ms']:.2f} | {c32['rps']:.0f} | "
            f"{c32['p50_ms']:.1f} | {c32['p99_ms']:.1f} | {errors or 'none'} |"
        )
    return [*lines, ""]


def add_parser(sub) -> None:
    p = sub.add_parser("serving", help="the serving targets against a naive Ray Serve deployment")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per load point")


def run(args) -> None:
    measure(args.repository, args.results, args.duration)
