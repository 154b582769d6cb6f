"""The HTTP layer without a web server: routes, status codes and error bodies."""

import asyncio

import numpy as np
import orjson
import pytest

from runtime.serve.handler import KServeHandler
from runtime.serve.model import ServedModel
from runtime.serve.telemetry import Telemetry
from tests.fixtures.artifacts import sequence_model


@pytest.fixture
def handler(tmp_path):
    models = [ServedModel(sequence_model(tmp_path / "seq" / str(v))) for v in (1, 2)]
    for model in models:
        model.warmup()
    handler = KServeHandler(models, max_body_bytes=4096)
    yield handler
    for model in models:
        model.close()


def call(handler, method, path, body=b"", headers=None):
    return asyncio.run(handler.handle(method, path, headers or {}, body))


def infer_body(x, name="x", datatype="FP32", **extra):
    return orjson.dumps(
        {
            "inputs": [
                {"name": name, "datatype": datatype, "shape": list(np.shape(x)), "data": np.asarray(x).ravel().tolist()}
            ],
            **extra,
        }
    )


def test_health_metadata_and_config(handler):
    assert call(handler, "GET", "/v2/health/live").status == 200
    assert call(handler, "GET", "/v2/health/ready").status == 200
    server = orjson.loads(call(handler, "GET", "/v2").body)
    assert server["name"] == "trtserve" and "binary_tensor_data" in server["extensions"]
    meta = orjson.loads(call(handler, "GET", "/v2/models/seq").body)
    assert meta["versions"] == ["2"]  # no version: the latest
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]
    config = orjson.loads(call(handler, "GET", "/v2/models/seq/versions/1/config").body)
    assert config["max_batch_size"] == 8 and config["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "dims": [-1]}
    assert call(handler, "GET", "/v2/models/seq/versions/1/ready").status == 200


def test_infer_and_stats(handler):
    response = call(
        handler,
        "POST",
        "/v2/models/seq/versions/1/infer",
        infer_body([[1.0, 2.0, 3.0]], id="abc"),
        {"x-request-id": "req-1"},
    )
    assert response.status == 200 and response.headers["x-request-id"] == "req-1"
    doc = orjson.loads(response.body)
    assert doc["id"] == "abc" and doc["model_version"] == "1"
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["doubled"]["data"] == [2.0, 4.0, 6.0] and outputs["total"]["data"] == [6.0]
    stats = orjson.loads(call(handler, "GET", "/v2/models/seq/versions/1/stats").body)["model_stats"][0]
    assert stats["inference_count"] == 1 and stats["inference_stats"]["success"]["count"] == 1
    assert stats["warmup_seconds"] > 0
    calls = stats["inference_stats"]
    assert stats["execution_count"] == 1 and calls["compute_infer"]["count"] == 1 and calls["compute_infer"]["ns"] > 0
    assert len(call(handler, "GET", "/v2/models/seq/stats").headers["x-request-id"]) == 32  # generated


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nope/infer", infer_body([[1.0]]), 404, "unknown model 'nope'"),
        ("/v2/models/seq/versions/9/infer", infer_body([[1.0]]), 404, "has no version '9'"),
        ("/v2/models/seq/infer", b"{oops", 400, "malformed JSON"),
        ("/v2/models/seq/infer", infer_body([[1.0]], name="y"), 400, "missing input 'x'"),
        (
            "/v2/models/seq/infer",
            infer_body([[1]], datatype="INT64"),
            400,
            "input 'x': expected dtype float32, got int64",
        ),
        ("/v2/models/seq/infer", infer_body([1.0, 2.0]), 400, "input 'x': expected rank 2"),
        ("/v2/models/seq/infer", infer_body(np.zeros((1, 65))), 400, "dim 1 (seq) is 65, outside [1, 64]"),
        ("/v2/models/seq/infer", infer_body(np.zeros((9, 2))), 400, "batch of 9 exceeds this model's max_batch_size 8"),
        ("/v2/models/seq/infer", infer_body([[1.0]], outputs=[{"name": "zz"}]), 400, "unknown output 'zz'"),
        ("/v2/models/seq/infer", b"x" * 5000, 413, "exceeds the limit of 4096"),
        ("/v2/nowhere", b"", 404, "no route"),
    ],
)
def test_bad_requests(handler, path, body, status, message):
    response = call(handler, "POST", path, body)
    assert response.status == status
    assert message in orjson.loads(response.body)["error"]
    # ...and the model keeps serving
    assert call(handler, "POST", "/v2/models/seq/infer", infer_body([[1.0]])).status == 200


def test_not_ready_until_warmed_up(tmp_path):
    model = ServedModel(sequence_model(tmp_path / "seq" / "1"))
    handler = KServeHandler([model])
    assert call(handler, "GET", "/v2/health/ready").status == 503
    assert call(handler, "GET", "/v2/models/seq/ready").headers["retry-after"] == "1"
    assert call(handler, "POST", "/v2/models/seq/infer", infer_body([[1.0]])).status == 503
    model.warmup()
    assert call(handler, "GET", "/v2/health/ready").status == 200
    assert call(handler, "POST", "/v2/models/seq/infer", infer_body([[1.0]])).status == 200
    model.close()


class RecordingTelemetry(Telemetry):
    def __init__(self) -> None:
        self.calls = []

    def request(self, model, status, seconds, queue_s, compute_s):
        self.calls.append(("request", model.label if model else None, status))

    def in_flight(self, model, delta):
        self.calls.append(("in_flight", model.label, delta))

    def batch_done(self, model, rows, seconds, requests):
        self.calls.append(("batch_done", model.label, rows, requests))

    def warmed_up(self, model):
        self.calls.append(("warmed_up", model.label))


def test_every_telemetry_hook_is_given_at_construction_and_called(tmp_path):
    telemetry = RecordingTelemetry()
    model = ServedModel(sequence_model(tmp_path / "seq" / "1"), telemetry=telemetry)
    handler = KServeHandler([model], telemetry=telemetry)
    model.warmup()
    assert telemetry.calls == [("warmed_up", "seq v1")]
    warmup_calls = len(telemetry.calls)
    assert call(handler, "POST", "/v2/models/seq/infer", infer_body([[1.0, 2.0]])).status == 200
    assert call(handler, "POST", "/v2/models/nope/infer", infer_body([[1.0]])).status == 404
    assert telemetry.calls[warmup_calls:] == [
        ("in_flight", "seq v1", 1),
        ("batch_done", "seq v1", 1, 1),
        ("in_flight", "seq v1", -1),
        ("request", "seq v1", 200),
    ]
    model.close()
