"""The HTTP layer without a web server: routes, status codes and error bodies."""

import asyncio
import logging
import threading
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from runtime.auth.tokens import TokenTable, digest
from runtime.rollout.commands import CommandReply
from runtime.serve import handler as handler_module
from runtime.serve.access_log import AccessLog
from runtime.serve.app_args import RequestLogging
from runtime.serve.body import FEEDBACK_LIMIT, SMALL_LIMIT, Body, BodyBudget
from runtime.serve.handler import HttpHandler
from runtime.serve.model import ServedModel
from runtime.serve.protocol import HEADER_LENGTH
from runtime.serve.telemetry import Telemetry
from tests.fixtures.artifacts import sequence_model
from tests.fixtures.text_model import text_model


@pytest.fixture
def handler(tmp_path):
    models = [ServedModel(sequence_model(tmp_path / "seq" / str(v))) for v in (1, 2)]
    for model in models:
        model.warmup()
    handler = HttpHandler(models, max_body_bytes=4096)
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
    handler = HttpHandler([model])
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
    handler = HttpHandler([model], telemetry=telemetry)
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


# --- what a client sends cannot make the handler work before it checked, nor answer with internals ----------


class NeverRead(Body):
    """A body that fails the test if anything reads it."""

    def __init__(self) -> None:
        super().__init__(self._chunks, None)
        self.touched = False

    async def _chunks(self):
        self.touched = True
        yield b"x" * (1 << 20)


def test_the_token_is_checked_before_a_byte_of_the_body_is_read(tmp_path):
    model = ServedModel(sequence_model(tmp_path / "seq" / "1"))
    model.warmup()
    handler = HttpHandler([model], auth=TokenTable.parse(f"infer {digest('a-token')}\nadmin {digest('a-token')}"))
    try:
        for path in ("/v2/models/seq/infer", "/v2/models/seq/feedback", "/v2/models/seq/rollout", "/nowhere"):
            body = NeverRead()
            response = asyncio.run(handler.handle("POST", path, {}, body))
            assert response.status == 401 and not body.touched, path
    finally:
        model.close()


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/v2/models/seq/feedback", FEEDBACK_LIMIT), ("/v2/models/seq/rollout", SMALL_LIMIT)],
)
def test_every_route_that_takes_a_body_has_a_limit(tmp_path, path, limit):
    async def command(model, action, args):
        return CommandReply(result={})

    model = ServedModel(sequence_model(tmp_path / "seq" / "1"))
    model.warmup()
    sink = SimpleNamespace(add_feedback=None)  # never reached
    handler = HttpHandler([model], rollout_command=command, captures={"seq": sink})
    try:
        response = call(handler, "POST", path, b"[" + b" " * limit + b"]")
        assert response.status == 413 and f"limit of {limit} bytes" in orjson.loads(response.body)["error"]
    finally:
        model.close()


def _binary_bytes_body(name: str, elements: int, size: int) -> tuple[bytes, dict]:
    element = b"y" * size
    raw = b"".join(len(element).to_bytes(4, "little") + element for _ in range(elements))
    header = orjson.dumps(
        {
            "inputs": [
                {"name": name, "datatype": "BYTES", "shape": [elements], "parameters": {"binary_data_size": len(raw)}}
            ]
        }
    )
    return header + raw, {HEADER_LENGTH: str(len(header))}


def test_inputs_are_checked_against_the_model_before_any_element_is_decoded(handler, monkeypatch):
    def no_decoding(head):
        raise AssertionError("decoded before the model's checks")

    monkeypatch.setattr(handler_module, "decode_inputs", no_decoding)
    body, headers = _binary_bytes_body("not_an_input", 4096, 16)  # 80 KB of BYTES for a name the model lacks
    handler.max_body_bytes = 64 << 20
    response = call(handler, "POST", "/v2/models/seq/infer", body, headers)
    assert response.status == 400 and "missing input 'x'; this model takes x" in orjson.loads(response.body)["error"]
    for doc, message in [
        ({"name": "x", "datatype": "FP32", "shape": [9, 2], "data": [0.0] * 18}, "batch of 9 exceeds"),
        ({"name": "x", "datatype": "FP32", "shape": [1, 65], "data": [0.0] * 65}, "is 65, outside [1, 64]"),
        ({"name": "x", "datatype": "FP64", "shape": [1, 2], "data": [0.0] * 2}, "expected dtype float32, got FP64"),
    ]:
        response = call(handler, "POST", "/v2/models/seq/infer", orjson.dumps({"inputs": [doc]}))
        assert response.status == 400 and message in orjson.loads(response.body)["error"], response.body
    asked = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}], "outputs": [{"name": "zz"}]}
    response = call(handler, "POST", "/v2/models/seq/infer", orjson.dumps(asked))
    assert response.status == 400 and "unknown output 'zz'" in orjson.loads(response.body)["error"]


def test_text_over_the_budget_is_refused_before_it_is_tokenized(tmp_path, monkeypatch):
    model = ServedModel(text_model(tmp_path / "text" / "1"))
    model.warmup()
    handler = HttpHandler([model])
    tokenized = []
    monkeypatch.setattr(model.preprocess, "__call__", lambda texts: tokenized.append(texts))
    try:
        body, headers = _binary_bytes_body("text", 2, model.max_text_bytes // 2 + 1)
        response = call(handler, "POST", "/v2/models/text/infer", body, headers)
        assert response.status == 400 and "max_text_bytes" in orjson.loads(response.body)["error"]
        text = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["the " * model.max_text_bytes]}
        response = call(handler, "POST", "/v2/models/text/infer", orjson.dumps({"inputs": [text]}))
        assert response.status == 400 and "bytes of text" in orjson.loads(response.body)["error"]
        assert not tokenized
    finally:
        model.close()


def test_large_requests_are_decoded_and_tokenized_off_the_event_loop(tmp_path):
    model = ServedModel(text_model(tmp_path / "text" / "1"))
    model.warmup()
    handler = HttpHandler([model])
    threads = []
    feed_from = model.feed_from

    def recording(request):
        threads.append(threading.current_thread().name)
        return feed_from(request)

    model.feed_from = recording
    try:
        small = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["the fox"]}
        large = {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["the quick fox " * 100] * 2}
        for doc in (small, large):
            assert call(handler, "POST", "/v2/models/text/infer", orjson.dumps({"inputs": [doc]})).status == 200
        assert threads[0] == threading.current_thread().name  # a small one: no thread hop
        assert threads[1].startswith("trtserve-decode")
    finally:
        handler.close()
        model.close()


NESTED_1000_DEEP = "nested"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"name": "x", "datatype": "FP32", "shape": [0, 2**62], "data": []}, "has a dimension above"),
        ({"name": "x", "datatype": "FP32", "shape": [1, 2**31 - 1], "data": []}, "is 2147483647, outside [1, 64]"),
        (
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, 1],
                "data": NESTED_1000_DEEP,
            },
            "nested deeper than its shape",
        ),
        ({"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [[1.0, [2.0]]]}, "is not a (nested) list"),
    ],
)
def test_shapes_and_nesting_no_request_could_fill_are_400s_naming_the_input(handler, doc, message):
    body = orjson.dumps({"inputs": [doc]})
    if doc["data"] is NESTED_1000_DEEP:  # deeper than orjson writes: spliced in as text
        body = body.replace(b'"nested"', b"[" * 1000 + b'"a"' + b"]" * 1000)
    response = call(handler, "POST", "/v2/models/seq/infer", body)
    error = orjson.loads(response.body)["error"]
    assert response.status == 400 and "'x'" in error and message in error, error


def test_an_output_asked_for_twice_is_refused_not_serialised_twice(handler):
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}],
        "outputs": [{"name": "doubled"}] * 40,
    }
    response = call(handler, "POST", "/v2/models/seq/infer", orjson.dumps(doc))
    assert response.status == 400 and "output 'doubled' is requested twice" in orjson.loads(response.body)["error"]


def test_ids_longer_than_256_bytes_are_refused(handler):
    body = infer_body([[1.0]], id="i" * 257)
    assert call(handler, "POST", "/v2/models/seq/infer", body).status == 400
    assert call(handler, "POST", "/v2/models/seq/infer", infer_body([[1.0]], id="i" * 256)).status == 200
    response = call(handler, "POST", "/v2/models/seq/infer", infer_body([[1.0]]), {"x-request-id": "r" * 257})
    assert response.status == 400 and len(response.headers["x-request-id"]) == 32  # not echoed back


def test_access_lines_follow_the_logging_args_and_name_the_request_and_version(tmp_path, caplog):
    """Sampled (the default) and errors: the 400 alone of four requests here; all: each. Every line written
    names its request, model and version."""
    model = ServedModel(sequence_model(tmp_path / "seq" / "1"))
    model.warmup()
    good, bad = infer_body([[1.0]]), infer_body([[1.0]], name="y")  # 200, 400
    written = {}
    for requests in ("sampled", "errors", "all"):
        handler = HttpHandler([model], access_log=AccessLog(RequestLogging(requests=requests)))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="trtserve.server"):
            for request_id, body in (("ok-0", good), ("ok-1", good), ("ok-2", good), ("bad", bad)):
                call(handler, "POST", "/v2/models/seq/infer", body, {"x-request-id": request_id})
        lines = [r for r in caplog.records if hasattr(r, "latency_ms")]
        assert all((r.model, r.model_version) == ("seq", "1") for r in lines)
        written[requests] = [(r.request_id, r.status) for r in lines]
        handler.close()
    model.close()
    assert written == {
        "sampled": [("bad", 400)],
        "errors": [("bad", 400)],
        "all": [("ok-0", 200), ("ok-1", 200), ("ok-2", 200), ("bad", 400)],
    }


def test_a_500_names_the_request_id_and_nothing_of_its_cause(handler, caplog):
    model = handler.models["seq"]["1"]

    def broken(feed):
        raise RuntimeError("secret internals: /srv/keys/model.key")

    model.batcher._run = broken
    with caplog.at_level(logging.ERROR, logger="trtserve.server"):
        response = call(
            handler, "POST", "/v2/models/seq/versions/1/infer", infer_body([[1.0]]), {"x-request-id": "r-9"}
        )
    assert response.status == 500
    assert orjson.loads(response.body) == {"error": "internal error; request id r-9"}
    assert any("secret internals" in (r.exc_text or "") or r.exc_info for r in caplog.records)  # in the log only


def test_only_requests_that_passed_the_checks_are_captured_or_remembered(handler):
    seen = []
    sink = SimpleNamespace(
        wants=lambda inference_id: True,
        record=lambda *args: seen.append(("record", args[0], args[3])),
        remember=lambda *args: seen.append(("remember", args[0])),
    )
    handler.captures = {"seq": sink}
    bad = orjson.dumps({"id": "bad", "inputs": [{"name": "x", "datatype": "FP32", "shape": [9, 1], "data": [0.0] * 9}]})
    assert call(handler, "POST", "/v2/models/seq/infer", bad).status == 400
    assert call(handler, "POST", "/v2/models/seq/infer", infer_body([[1.0]], id="good")).status == 200
    assert seen == [("record", "good", 200)]


def test_no_answer_shows_credentials_of_a_repository_uri(handler):
    secret = "s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG@bucket/models"

    async def command(model, action, args):
        return CommandReply(refused="invalid", error=f"eval gate: {secret}/seq/2 cannot be read")

    handler.rollout_command = command
    answer = call(handler, "POST", "/v2/models/seq/rollout", orjson.dumps({"action": "start", "to": 2}))
    assert answer.status == 400 and b"wJalrXUtnFEMI" not in answer.body and b"AKIAEXAMPLE" not in answer.body
    assert b"s3://***@bucket/models/seq/2" in answer.body

    handler.rollout_command = None
    handler._versions = lambda name: (_ for _ in ()).throw(handler_module.NotFound(f"no model under {secret}"))
    answer = call(handler, "GET", "/v2/models/seq")
    assert answer.status == 404 and b"wJalrXUtnFEMI" not in answer.body and b"***@bucket" in answer.body


def test_a_bug_is_a_500_never_a_client_error_a_rollout_would_ignore(handler):
    model = handler.models["seq"]["1"]
    for bug in (KeyError("total"), OverflowError("Python int too large to convert to C long")):

        def broken(feed, bug=bug):
            raise bug

        model.batcher._run = broken
        response = call(handler, "POST", "/v2/models/seq/versions/1/infer", infer_body([[1.0]]), {"x-request-id": "b"})
        assert response.status == 500 and orjson.loads(response.body) == {"error": "internal error; request id b"}


def test_a_body_past_the_largest_request_the_model_takes_is_refused_unread(handler):
    handler.max_body_bytes = 64 << 20
    model = handler.models["seq"]["1"]
    body = NeverRead()
    body._declared = str(model.max_request_bytes + 1)
    response = asyncio.run(handler.handle("POST", "/v2/models/seq/versions/1/infer", {}, body))
    assert response.status == 413 and not body.touched
    assert f"limit of {model.max_request_bytes} bytes" in orjson.loads(response.body)["error"]


def test_refusals_of_the_body_are_never_evidence_against_a_version(handler):
    async def chunks():
        yield infer_body([[1.0]])

    full = Body(chunks, None, BodyBudget(0))  # the replica holds all the body bytes it may: 503
    response = asyncio.run(handler.handle("POST", "/v2/models/seq/infer", {}, full))
    assert response.status == 503 and response.headers["retry-after"] == "1"
    counts = handler.traffic.report("seq")["counts"]
    assert not any(key.endswith("/ran") for key in counts), counts
