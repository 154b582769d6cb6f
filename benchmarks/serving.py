"""Issue 3's serving targets, measured in one run on this machine: each server started fresh with
`runtime.launch.LocalServe`, loaded by `benchmarks.http_load` over loopback, stopped before the next."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import yaml

from benchmarks import machine
from benchmarks.http_load import build_request, closed_loop
from runtime.launch import LocalServe

HOST, PORT = "127.0.0.1", 8000
ROOT = Path(__file__).resolve().parent.parent


def _config(path: Path, import_path: str, args: dict) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "proxy_location": "EveryNode",
                "http_options": {"host": HOST, "port": PORT},
                "applications": [{"name": "bench", "route_prefix": "/", "import_path": import_path, "args": args}],
            },
            sort_keys=False,
        )
    )
    return path


def _load(requests, concurrency: int, duration_s: float, rows=None) -> dict:
    return asyncio.run(closed_loop(HOST, PORT, requests, concurrency, duration_s, warmup_s=2.0, rows=rows)).summary()


def _json_request(path: str, inputs: list[dict]) -> bytes:
    return build_request(
        HOST,
        PORT,
        path,
        orjson.dumps({"inputs": inputs}, option=orjson.OPT_SERIALIZE_NUMPY),
        {"Content-Type": "application/json"},
    )


def _binary_request(path: str, name: str, x: np.ndarray, output: str) -> bytes:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": name, "datatype": "FP32", "shape": list(x.shape), "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    )
    return build_request(HOST, PORT, path, header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))})


def _warmup_seconds(server: LocalServe, model: str) -> float:
    _, body = server.get(f"/v2/models/{model}/stats")
    return json.loads(body)["model_stats"][0]["warmup_seconds"]


def sentences(count: int, seed: int = 0) -> list[str]:
    """A realistic mix: mostly short sentences, a long tail up to the model's 256 tokens."""
    from convert.zoo.minilm import CORPUS

    words = " ".join(CORPUS).split()
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=2.8, sigma=0.8, size=count), 2, 220).astype(int)
    return [" ".join(rng.choice(words, size=n)) for n in lengths]


def raw_engine_throughput(version_dir: Path, texts: list[str], batch_sizes=(1, 2, 4, 8, 16, 32)) -> dict:
    """Sentences/s of the engine in-process, tokenizing each batch to its own longest, per batch size.
    ONNX Runtime's own default (spinning worker threads) is kept: it is the faster setting for a process
    that only runs the engine, so the baseline is the strongest one."""
    from tokenizers import Tokenizer

    from runtime.backends.onnxruntime import OnnxRuntimeEngine
    from runtime.preprocessing import encode
    from runtime.signature import Signature

    tokenizer = Tokenizer.from_file(str(version_dir / "preprocessing/tokenizer/tokenizer.json"))
    signature = Signature.from_manifest(json.loads((version_dir / "manifest.json").read_text()))
    out = {}
    with OnnxRuntimeEngine(version_dir / "model.onnx", signature, spin=True) as engine:
        for b in batch_sizes:
            started = time.perf_counter()
            for i in range(0, len(texts), b):
                engine.infer(encode(tokenizer, texts[i : i + b], 256, ["input_ids", "attention_mask"]))
            out[b] = round(len(texts) / (time.perf_counter() - started), 1)
    return out


def ensure_model(repository: Path, config: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "convert", "build", str(config), "--repository", str(repository), "--if-changed", "-q"],
        check=True,
        capture_output=True,
    )
    name = yaml.safe_load(config.read_text())["name"]
    return max((repository / name).iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)


def run(repository: Path, results: Path, duration_s: float = 10.0) -> dict:
    repository = repository.resolve()
    cnn = ensure_model(repository, ROOT / "configs/models/cnn.yaml")
    minilm = ensure_model(repository, ROOT / "configs/models/minilm.yaml")
    image224 = ensure_model(repository, ROOT / "benchmarks/configs/image224.yaml")
    report: dict = {"benchmark": "serving", "machine": machine.describe(), "duration_s": duration_s}
    work = Path(tempfile.mkdtemp(prefix="trtserve-bench-"))

    def serve(name: str, import_path: str, args: dict, ingress: str) -> LocalServe:
        return LocalServe(
            _config(work / f"{name}.yaml", import_path, args), ingress=ingress, log_path=work / f"{name}-{ingress}.log"
        )

    # Tiny CNN, JSON, concurrency 1 and 32: naive deployment vs trtserve, behind both ingresses.
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    image = {"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": x.ravel()}
    cnn_runs = {}
    naive = {"model": str(cnn / "model.onnx")}
    trtserve = {"repository": str(repository), "models": [{"name": "cnn"}]}
    for app, import_path, args, path, ingresses in (
        ("naive", "benchmarks.naive_app:build", naive, "/", ("proxy", "haproxy")),
        ("naive-ray-defaults", "benchmarks.naive_app:build", {**naive, "max_ongoing_requests": 5}, "/", ("proxy",)),
        ("trtserve", "runtime.app:build_app", trtserve, "/v2/models/cnn/infer", ("proxy", "haproxy")),
    ):
        for ingress in ingresses:
            with serve(f"cnn-{app}", import_path, args, ingress) as server:
                request = _json_request(path, [image])
                entry = {"c1": _load(request, 1, duration_s), "c32": _load(request, 32, duration_s)}
                if app == "trtserve" and ingress == "haproxy":
                    report["cold_start_cnn"] = {
                        "ready_s": round(server.ready_after_s, 2),
                        "warmup_s": round(_warmup_seconds(server, "cnn"), 3),
                    }
            cnn_runs[f"{app}/{ingress}"] = entry
            print(f"cnn {app} {ingress}: {entry}", file=sys.stderr)
    report["cnn_json"] = cnn_runs

    # MiniLM, realistic sentence mix: raw engine (no server running) vs trtserve, text vs pad-to-128.
    texts = sentences(512)
    report["minilm_raw_engine_sentences_per_s"] = raw_engine_throughput(minilm, texts)
    from tokenizers import Tokenizer

    from runtime.preprocessing import encode

    tokenizer = Tokenizer.from_file(str(minilm / "preprocessing/tokenizer/tokenizer.json"))
    as_text = [
        _json_request("/v2/models/minilm/infer", [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [t]}])
        for t in texts
    ]
    padded = []
    for t in texts:
        feed = encode(tokenizer, [t], 128, ["input_ids", "attention_mask"], pad_to=128)
        padded.append(
            _json_request(
                "/v2/models/minilm/infer",
                [{"name": k, "datatype": "INT64", "shape": list(v.shape), "data": v.ravel()} for k, v in feed.items()],
            )
        )
    args = {"repository": str(repository), "models": [{"name": "minilm"}]}
    with serve("minilm", "runtime.app:build_app", args, "haproxy") as server:
        report["cold_start_minilm"] = {
            "ready_s": round(server.ready_after_s, 2),
            "warmup_s": round(_warmup_seconds(server, "minilm"), 3),
        }
        report["minilm_text_mix"] = _load(as_text, 32, duration_s)
        stats = json.loads(server.get("/v2/models/minilm/stats")[1])["model_stats"][0]
        report["minilm_server_compute_ms_per_sentence"] = round(
            stats["inference_stats"]["compute_infer"]["ns"] / stats["inference_count"] / 1e6, 3
        )
        report["minilm_server_rows_per_engine_call"] = round(stats["inference_count"] / stats["execution_count"], 2)
        report["minilm_pad128"] = _load(padded, 32, duration_s)
    print(f"minilm: {report['minilm_text_mix']} vs pad128 {report['minilm_pad128']}", file=sys.stderr)

    # 3x224x224 FP32: binary tensors vs JSON, same server.
    big = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    args = {"repository": str(repository), "models": [{"name": "image224"}]}
    with serve("image224", "runtime.app:build_app", args, "haproxy"):
        path = f"/v2/models/{image224.parent.name}/infer"
        report["image224_binary"] = _load(_binary_request(path, "image", big, "logits"), 8, duration_s)
        report["image224_json"] = _load(
            _json_request(path, [{"name": "image", "datatype": "FP32", "shape": list(big.shape), "data": big.ravel()}]),
            8,
            duration_s,
        )
    print(f"image224: binary {report['image224_binary']} json {report['image224_json']}", file=sys.stderr)

    results.mkdir(parents=True, exist_ok=True)
    (results / "serving.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
