"""What the benchmarks share: requests built once, a closed-loop measurement, and the demo models built
when missing. (Servers started for one measurement and a server's own statistics are capacity planning's:
runtime.capacity.local_server and runtime.capacity.server_stats.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from runtime.capacity.load_generator import build_request, closed_loop
from runtime.capacity.local_server import HOST, PORT
from runtime.engine.manifest import Manifest, read_manifest
from runtime.engine.repository import version_dir

ROOT = Path(__file__).resolve().parent.parent


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


def arm_order(pair: int, arms: tuple[str, ...]) -> tuple[str, ...]:
    """Which arm of an on/off or current/baseline comparison runs first alternates from pair to pair, so the
    machine's drift cancels in the pairs' ratios."""
    return arms if pair % 2 == 0 else tuple(reversed(arms))


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
