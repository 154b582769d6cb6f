import struct

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.serve.error_codes import code_of
from runtime.serve.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    decode_request,
    encode_response,
    parse_request,
)


def binary_body(header: dict, *chunks: bytes) -> tuple[bytes, int]:
    raw = orjson.dumps(header)
    return raw + b"".join(chunks), len(raw)


def test_json_request():
    body = orjson.dumps(
        {
            "id": "42",
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
                {"name": "t", "datatype": "BYTES", "shape": [2], "data": ["a", "bé"]},
                {"name": "b", "datatype": "BOOL", "shape": [1], "data": [True]},
            ],
        }
    )
    request = decode_request(body)
    assert request.id == "42" and request.outputs is None
    np.testing.assert_array_equal(request.inputs["x"], np.array([[1, 2], [3, 4]], np.float32))
    assert request.inputs["x"].dtype == np.float32
    assert list(request.inputs["t"]) == [b"a", "bé".encode()]
    assert request.inputs["b"].dtype == np.bool_


def test_binary_request_with_bytes_and_numbers():
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    strings = b"".join(struct.pack("<I", len(s)) + s for s in (b"hi", b""))
    body, length = binary_body(
        {
            "inputs": [
                {"name": "x", "datatype": "INT64", "shape": [2, 3], "parameters": {"binary_data_size": x.nbytes}},
                {"name": "t", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(strings)}},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        },
        x.tobytes(),
        strings,
    )
    request = decode_request(body, length)
    np.testing.assert_array_equal(request.inputs["x"], x)
    assert list(request.inputs["t"]) == [b"hi", b""]
    assert request.outputs[0].binary


@pytest.mark.parametrize(
    ("header", "chunks", "length", "message"),
    [
        (None, [b"{not json"], None, "malformed JSON"),
        ({"inputs": []}, [], None, "non-empty 'inputs'"),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]},
            [],
            None,
            "input 'x': shape [2] needs 2 elements, got 1",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]},
            [],
            None,
            "input 'x': unknown datatype 'FP99'",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]},
            [],
            None,
            "input 'x': 'shape' must be a list of non-negative integers",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]},
            [],
            None,
            "input 'x': data is not a (nested) list of FP32 values",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}]},
            [],
            None,
            "input 'x': INT32 data must be integers",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]},
            [],
            None,
            "input 'x' has neither 'data' nor a binary_data_size",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]},
            [b"\0" * 4],
            "auto",
            "binary_data_size 8 runs past the end",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}]},
            [b"\0" * 4],
            "auto",
            "shape [2] of FP32 needs 8 bytes, binary_data_size is 4",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]},
            [b"\0" * 8],
            "auto",
            "4 bytes of binary data are not claimed",
        ),
        (
            {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]},
            [struct.pack("<I", 9) + b"ab"],
            "auto",
            "BYTES element 0 runs past its binary data",
        ),
        (
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
                    {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
                ]
            },
            [],
            None,
            "given twice",
        ),
    ],
)
def test_bad_requests_are_400_and_name_the_input(header, chunks, length, message):
    if header is None:
        body, header_length = b"".join(chunks), None
    else:
        body, auto = binary_body(header, *chunks)
        header_length = auto if length == "auto" else length
    with pytest.raises(ProtocolError) as info:
        decode_request(body, header_length)
    assert code_of(info.value).http == 400
    assert message in str(info.value)


def test_header_length_beyond_body():
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length is 99"):
        decode_request(b"{}", 99)


def test_json_response():
    outputs = {"y": np.array([[1.5, 2.0]], np.float32), "n": np.array([3], np.int64)}
    body, headers = encode_response("m", "1", outputs, InferRequest({}, id="7"))
    doc = orjson.loads(body)
    assert headers["content-type"] == "application/json"
    assert doc["id"] == "7" and doc["model_name"] == "m" and doc["model_version"] == "1"
    assert doc["outputs"][0] == {"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}
    assert doc["outputs"][1]["datatype"] == "INT64"


def test_binary_response_round_trips():
    y = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    request = decode_request(
        orjson.dumps(
            {
                "inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [0]}],
                "parameters": {"binary_data_output": True},
            }
        )
    )
    body, headers = encode_response("m", "1", {"y": y}, request)
    length = int(headers[HEADER_LENGTH])
    doc = orjson.loads(body[:length])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == y.nbytes
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32).reshape(2, 3), y)


def _nested(depth: int, leaf: bytes) -> bytes:
    return b"[" * depth + leaf + b"]" * depth


@pytest.mark.parametrize(("datatype", "leaf"), [("BYTES", b'"a"'), ("FP32", b"1.0"), ("INT64", b"1")])
def test_data_nested_deeper_than_its_shape_is_a_400_never_a_recursion_error(datatype, leaf):
    body = b'{"inputs":[{"name":"t","datatype":"%s","shape":[1],"data":%s}]}' % (datatype.encode(), _nested(1000, leaf))
    with pytest.raises(ProtocolError, match=r"input 't': data is nested deeper than its shape \[1\]"):
        decode_request(body)


def test_flat_and_nested_data_decode_alike_and_ragged_data_is_refused():
    flat = decode_request(
        orjson.dumps({"inputs": [{"name": "t", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3, 4]}]})
    )
    nested = decode_request(
        orjson.dumps({"inputs": [{"name": "t", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]})
    )
    assert np.array_equal(flat.inputs["t"], nested.inputs["t"]) and flat.inputs["t"].shape == (2, 2)
    with pytest.raises(ProtocolError, match="ragged"):
        decode_request(
            orjson.dumps({"inputs": [{"name": "t", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], 3, 4]}]})
        )


@pytest.mark.parametrize(
    ("shape", "message"),
    [([0, 2**62], "has a dimension above"), ([2**31 - 1, 2**31 - 1], "needs 4611686014132420609 elements, got 0")],
)
def test_a_shape_no_body_could_fill_is_refused_before_anything_is_allocated(shape, message):
    with pytest.raises(ProtocolError, match=message):
        decode_request(orjson.dumps({"inputs": [{"name": "t", "datatype": "FP32", "shape": shape, "data": []}]}))


@pytest.mark.parametrize(
    "data",
    [[["a", "b", "c"], "xyz"], [["a", "b", "c"], {"k": 1, "j": 2, "l": 3}], [["a", "b", "c"], 7]],
)
def test_strings_or_objects_among_rows_are_ragged_never_iterated_as_rows(data):
    with pytest.raises(ProtocolError, match="input 't': data is ragged"):
        decode_request(orjson.dumps({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2, 3], "data": data}]}))


def test_text_is_counted_in_bytes_of_utf_8():
    from runtime.serve.protocol import text_bytes

    head = parse_request(
        orjson.dumps({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2], "data": ["ab", "😀é"]}]})
    )
    assert text_bytes(head.inputs[0]) == 2 + 4 + 2


def test_binary_bytes_elements_beyond_the_shape_stop_the_decoding_at_once():
    raw = b"".join(len(b"ab").to_bytes(4, "little") + b"ab" for _ in range(100_000))
    header = orjson.dumps(
        {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(raw)}}]}
    )
    with pytest.raises(ProtocolError, match=r"needs 2 BYTES elements, got more"):
        decode_request(header + raw, len(header))


def test_outputs_named_twice_and_overlong_ids_are_refused():
    inputs = [{"name": "t", "datatype": "FP32", "shape": [1], "data": [1.0]}]
    with pytest.raises(ProtocolError, match="output 'y' is requested twice"):
        parse_request(orjson.dumps({"inputs": inputs, "outputs": [{"name": "y"}, {"name": "y"}]}))
    with pytest.raises(ProtocolError, match="'id' is 257 bytes; at most 256"):
        parse_request(orjson.dumps({"inputs": inputs, "id": "é" * 128 + "x"}))
    with pytest.raises(ProtocolError, match="'id' must be a string"):
        parse_request(orjson.dumps({"inputs": inputs, "id": {"a": 1}}))
    assert parse_request(orjson.dumps({"inputs": inputs, "id": 7})).id == "7"


@settings(max_examples=200, deadline=None)
@given(
    datatype=st.sampled_from(["FP16", "FP32", "FP64", "INT8", "UINT8", "INT16", "INT32", "UINT32", "INT64", "BOOL"]),
    data=st.data(),
)
def test_json_numbers_decode_as_numpy_would_convert_them_and_out_of_range_is_a_400(datatype, data):
    """JSON numbers decode to what numpy's own conversion of the list gives, value for value, and what it
    refuses as out of range (a float too large for FP16 or FP32, an integer beyond its type) is a 400 naming
    the input, never a 500."""
    dtype = np.dtype(
        {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BOOL": np.bool_}.get(datatype, datatype.lower())
    )
    if dtype.kind == "f":
        values = data.draw(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), max_size=20))
    elif dtype.kind == "b":
        values = data.draw(st.lists(st.booleans(), max_size=20))
    else:
        info = np.iinfo(dtype)
        values = data.draw(
            st.lists(
                st.integers(max(int(info.min) * 2 - 1, -(2**63)), min(int(info.max) * 2 + 1, 2**64 - 1)), max_size=20
            )
        )
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [len(values)], "data": values}]})
    try:
        with np.errstate(over="raise", invalid="raise"):
            expected = np.asarray(values, dtype=dtype)
    except (FloatingPointError, OverflowError):
        with pytest.raises(ProtocolError, match="input 'x'"):
            decode_request(body)
        return
    decoded = decode_request(body).inputs["x"]
    assert decoded.dtype == dtype and decoded.shape == (len(values),)
    np.testing.assert_array_equal(decoded, expected)
