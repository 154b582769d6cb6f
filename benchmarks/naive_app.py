"""The serving baseline: a naive Ray Serve deployment, an ONNX Runtime session called in __call__,
JSON in and out.

`max_ongoing_requests` is the one setting raised (to 100): with Ray's default of 5, the router backs off
at concurrency 32 and the baseline collapses to a few requests/s, which would flatter any comparison.
`python -m benchmarks serving` measures both and RESULTS.md shows both."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from ray import serve
from starlette.requests import Request


@serve.deployment
class NaiveOnnx:
    def __init__(self, model_path: str) -> None:
        self.session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    async def __call__(self, request: Request) -> dict:
        if request.method == "GET":  # lets runtime.serve.launcher see the replica is up; not on the measured path
            return {"ready": True}
        doc = await request.json()
        tensor = doc["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        out = self.session.run(None, {self.input: x})[0]
        return {
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": list(out.shape), "data": out.ravel().tolist()}]
        }


def build(args: dict) -> serve.Application:
    return NaiveOnnx.options(max_ongoing_requests=args.get("max_ongoing_requests", 100)).bind(args["model"])
