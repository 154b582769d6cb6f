"""benchmarks compare's FastAPI contenders, plain and hand-tuned, answer what the engine answers: a comparison
with them is a comparison of the same work."""

from __future__ import annotations

import urllib.request

import numpy as np
import orjson
import pytest

from benchmarks.fastapi_app import serving
from runtime import load_engine
from tests.fixtures.ports import free_port


@pytest.mark.parametrize("path", ["/v2/models/cnn/infer", "/tuned/v2/models/cnn/infer"])
def test_the_fastapi_contenders_answer_the_engines_logits(built_repository, tmp_path, path):
    version = built_repository / "cnn" / "1"
    image = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": image.ravel().tolist()}]}
    port = free_port()
    with serving(version / "model.onnx", "127.0.0.1", port, tmp_path / "fastapi.log"):
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=orjson.dumps(body), headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            (output,) = orjson.loads(response.read())["outputs"]
    with load_engine(version, "onnxruntime") as engine:
        expected = engine.infer({"image": image})["logits"]
    np.testing.assert_allclose(np.asarray(output["data"]).reshape(output["shape"]), expected, rtol=1e-5, atol=1e-6)
