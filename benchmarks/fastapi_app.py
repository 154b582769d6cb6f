"""The plain-Python contenders of `benchmarks compare`: FastAPI on uvicorn (one process, uvloop and httptools,
access log off) with an ONNX Runtime session, answering KServe v2 JSON for cnn. No batching, no queue.

- `/v2/models/cnn/infer`, plain: as FastAPI and ONNX Runtime's tutorials write it. The body is a pydantic
  model of the request, the handler a plain `def` (FastAPI runs it in its thread pool), the session made with
  ONNX Runtime's defaults.
- `/tuned/v2/models/cnn/infer`, hand-tuned: the raw body through orjson, the model run on the event loop at
  once (for a model this small a thread-pool hop costs more than the call), one intra-op thread as trtserve's
  replica has (its num_cpus). About the fastest a single Python process answers it.

    TRTSERVE_FASTAPI_MODEL=model_repository/cnn/1/model.onnx python -m uvicorn benchmarks.fastapi_app:app \\
        --port 8000 --no-access-log
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

MODEL_ENV = "TRTSERVE_FASTAPI_MODEL"
READY_TIMEOUT_S = 60.0

app = FastAPI()
_sessions: dict[str, ort.InferenceSession] = {}


def _model(tuned: bool) -> ort.InferenceSession:
    kind = "tuned" if tuned else "plain"
    if kind not in _sessions:
        options = ort.SessionOptions()
        if tuned:
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
        _sessions[kind] = ort.InferenceSession(os.environ[MODEL_ENV], options, providers=["CPUExecutionProvider"])
    return _sessions[kind]


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[Tensor]


class InferResponse(BaseModel):
    model_name: str
    outputs: list[Tensor]


@app.get("/v2/health/ready")
async def ready() -> dict:
    for tuned in (False, True):
        _model(tuned)
    return {"ready": True}


@app.post("/v2/models/cnn/infer")
def infer(request: InferRequest) -> InferResponse:
    session = _model(tuned=False)
    tensor = request.inputs[0]
    x = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    output = Tensor(name="logits", shape=list(out.shape), datatype="FP32", data=out.ravel().tolist())
    return InferResponse(model_name="cnn", outputs=[output])


@app.post("/tuned/v2/models/cnn/infer")
async def infer_tuned(request: Request) -> Response:
    session = _model(tuned=True)
    tensor = orjson.loads(await request.body())["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    answer = {
        "model_name": "cnn",
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": list(out.shape), "data": out.ravel().tolist()}],
    }
    return Response(orjson.dumps(answer), media_type="application/json")


@contextlib.contextmanager
def serving(model: Path, host: str, port: int, log: Path) -> Iterator[subprocess.Popen]:
    """This app on uvicorn in a process of its own at host:port until the block ends; ready when it yields."""
    command = [sys.executable, "-m", "uvicorn", "benchmarks.fastapi_app:app", "--host", host, "--port", str(port)]
    command += ["--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env={**os.environ, MODEL_ENV: str(model)}, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/v2/health/ready", timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the FastAPI contender did not start ({log})") from None
                time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
