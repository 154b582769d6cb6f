"""Property-based tests of the protocol parsing: every request, however malformed, is either decoded or
refused with a 4xx and one line saying why; through the handler, never a 5xx, and the model keeps serving."""

import asyncio
import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runtime.serve.error_codes import code_of
from runtime.serve.handler import HttpHandler
from runtime.serve.model import ServedModel
from runtime.serve.protocol import InferRequest, ProtocolError, decode_request
from tests.fixtures.artifacts import sequence_model
from tests.fixtures.fuzz import infer_requests, json_values

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _header_length(headers):
    value = headers.get("inference-header-content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _decoded_or_refused(body: bytes, header_length: int | None) -> None:
    try:
        request = decode_request(body, header_length)
    except ProtocolError as e:
        assert 400 <= code_of(e).http < 500
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(request, InferRequest) and request.inputs
    for array in request.inputs.values():
        assert isinstance(array, np.ndarray)


@FUZZ
@given(st.binary(max_size=2048), st.one_of(st.none(), st.integers(-5, 3000)))
def test_any_bytes(body, header_length):
    _decoded_or_refused(body, header_length)


@FUZZ
@given(json_values)
def test_any_json(doc):
    _decoded_or_refused(json.dumps(doc).encode(), None)


def _known(doc: dict) -> tuple[bytes, dict]:
    return json.dumps(doc).encode(), {}


X = {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}


# Cases the fuzzing found once (each was a 500), kept so they are tried every run.
@example(_known({"inputs": [{**X, "shape": [1] * 70}]}))  # more dimensions than NumPy allows
@example(_known({"inputs": [X], "outputs": [{"name": "doubled", "parameters": [1]}]}))
@example(_known({"inputs": [{**X, "datatype": "FP16", "data": [1e10]}]}))  # FP16 overflow
@FUZZ
@given(infer_requests())
def test_requests_wrong_in_every_way(request):
    body, headers = request
    _decoded_or_refused(body, _header_length(headers))


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    model = ServedModel(sequence_model(tmp_path_factory.mktemp("fuzz") / "seq" / "1"))
    model.warmup()
    yield HttpHandler([model], max_body_bytes=1 << 16)
    model.close()


VALID = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]})


@FUZZ
@given(request=infer_requests(), path=st.sampled_from(["/v2/models/seq/infer", "/v2/models/seq/versions/1/infer"]))
def test_the_handler_answers_4xx_and_keeps_serving(handler, request, path):
    body, headers = request
    response = asyncio.run(handler.handle("POST", path, headers, body))
    assert response.status < 500, response.body
    if response.status != 200:
        error = orjson.loads(response.body)["error"]
        assert error and "\n" not in error
    assert asyncio.run(handler.handle("POST", path, {}, VALID)).status == 200
