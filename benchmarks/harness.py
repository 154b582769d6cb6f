"""What the benchmarks share: servers started for one measurement, requests built once, a closed-loop
measurement, the server's own statistics, and the demo models built when missing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from benchmarks.http_load import build_request, closed_loop
from runtime.engine.manifest import Manifest, read_manifest
from runtime.engine.repository import version_dir
from runtime.serve.launcher import LocalServe

HOST, PORT = "127.0.0.1", 8000
URL = f"http://{HOST}:{PORT}"
ROOT = Path(__file__).resolve().parent.parent
APP = "runtime.serve.app:build_app"


def serve_config(
    path: Path, args: dict[str, Any], import_path: str = APP, name: str = "bench", port: int = PORT
) -> Path:
    """A Serve config of one application on HOST:`port`, written to `path`."""
    doc = {
        "proxy_location": "EveryNode",
        "http_options": {"host": HOST, "port": port},
        "applications": [{"name": name, "route_prefix": "/", "import_path": import_path, "args": args}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def server(work: Path, label: str, args: dict[str, Any], import_path: str = APP, ingress: str | None = None):
    """A LocalServe of one application, its config and log under `work` (a context manager)."""
    config = serve_config(work / f"{label}.yaml", args, import_path)
    return LocalServe(config, ingress=ingress, log_path=work / f"{label}-{ingress or 'default'}.log")


def json_request(path: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> bytes:
    """An HTTP request carrying `inputs` as Open Inference Protocol JSON (BYTES for object arrays)."""
    tensors = []
    for name, array in inputs.items():
        if array.dtype == object:
            tensors.append({"name": name, "datatype": "BYTES", "shape": list(array.shape), "data": array.tolist()})
        else:
            datatype = {np.float32: "FP32", np.int64: "INT64", np.float16: "FP16", np.int32: "INT32"}[array.dtype.type]
            tensors.append({"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel()})
    doc: dict[str, Any] = {"inputs": tensors}
    if outputs:
        doc["outputs"] = [{"name": o} for o in outputs]
    body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return build_request(HOST, PORT, path, body, {"Content-Type": "application/json"})


def binary_request(path: str, name: str, array: np.ndarray, output: str) -> bytes:
    """One FP32 input as binary tensor data, the output asked for as binary too."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    )
    return build_request(
        HOST, PORT, path, header + array.tobytes(), {"Inference-Header-Content-Length": str(len(header))}
    )


def closed_load(requests: bytes | list[bytes], concurrency: int, duration_s: float, rows=None) -> dict:
    """A closed loop at `concurrency` against HOST:PORT for `duration_s`, after 2 s of warm-up: its summary."""
    result = asyncio.run(closed_loop(HOST, PORT, requests, concurrency, duration_s, warmup_s=2.0, rows=rows))
    return result.summary()


def model_stats(url: str, model: str) -> dict:
    """The model's Triton statistics (/v2/models/M/stats)."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as response:
        return json.loads(response.read())["model_stats"][0]


def rows_per_call(before: dict, after: dict) -> float:
    """Rows per engine call between two readings of model_stats."""
    calls = after["execution_count"] - before["execution_count"]
    return (after["inference_count"] - before["inference_count"]) / calls if calls else float("nan")


def served_batching(url: str, model: str) -> tuple[int, float]:
    """max_batch_size and max_queue_delay_ms of the running model (Triton's model configuration)."""
    with urllib.request.urlopen(f"{url}/v2/models/{model}/config", timeout=10) as response:
        config = json.loads(response.read())
    delay_us = config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0)
    return int(config["max_batch_size"]), float(delay_us) / 1e3


def ensure_model(repository: Path, config: Path) -> tuple[Path, Manifest]:
    """The latest version of the model `config` describes, built first unless it is up to date."""
    subprocess.run(
        [sys.executable, "-m", "convert", "build", str(config), "--repository", str(repository), "--if-changed", "-q"],
        check=True,
        capture_output=True,
    )
    name = yaml.safe_load(config.read_text())["name"]
    directory = version_dir(repository, name)
    return directory, read_manifest(directory)
