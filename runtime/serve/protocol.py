"""The Open Inference Protocol (KServe v2) as Triton speaks it: inference requests and responses in JSON
and with the binary tensor data extension. Pure functions of bytes and arrays; no HTTP server here."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from math import prod

import numpy as np
import orjson

HEADER_LENGTH = "inference-header-content-length"  # lower-case: HTTP header names are case-insensitive
MAX_DIMS = 64  # NumPy's limit (NPY_MAXDIMS); no model has more
MAX_DIM = 2**31 - 1  # one dimension's size at most (TensorRT's and ONNX Runtime's int32 sizes)
MAX_ID_BYTES = 256  # a request id (the body's "id", or X-Request-ID) at most: ids are remembered and captured

NUMPY_DTYPES = {  # Open Inference Protocol datatype -> numpy dtype (BYTES: object arrays)
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_DATATYPE = {v: k for k, v in NUMPY_DTYPES.items()}
DATATYPES = (*NUMPY_DTYPES, "BYTES")


class ProtocolError(Exception):
    """A request the protocol cannot accept; the message names what is wrong (a client error: error_codes)."""


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InputHead:
    """One input as its request declares it, before any element is decoded."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int  # elements the shape holds
    binary: memoryview | None  # its binary data (the binary tensor data extension), or
    data: object = None  # its JSON `data`, as parsed


@dataclass
class RequestHead:
    """An infer request parsed and checked for shape, nothing decoded yet: what a model's limits are
    checked against before any work that grows with the request's size."""

    inputs: list[InputHead]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: every output
    binary_output: bool = False  # request-level default for outputs not listed
    parameters: dict = field(default_factory=dict)


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: every output
    binary_output: bool = False  # request-level default for outputs not listed
    parameters: dict = field(default_factory=dict)


def datatype_of(array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    try:
        return _DATATYPE[array.dtype]
    except KeyError:
        raise TypeError(f"dtype {array.dtype} has no Open Inference Protocol datatype") from None


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse and decode an infer request; raise ProtocolError (400) naming the input at fault. (The server
    parses first, checks the head against the model, then decodes: `parse_request`, `decode_inputs`.)"""
    return decode_inputs(parse_request(body, header_length))


def parse_request(body: bytes | bytearray, header_length: int | None = None) -> RequestHead:
    """The request's JSON header, checked: inputs named once with a known datatype and a sane shape whose
    elements the body can hold, outputs named once, an id of at most MAX_ID_BYTES. No element is decoded."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
            )
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    else:
        header, binary = body, memoryview(b"")
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"malformed JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the request must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("the request needs a non-empty 'inputs' list")

    inputs: list[InputHead] = []
    seen: set[str] = set()
    offset = 0
    for index, spec in enumerate(raw_inputs):
        name, shape, datatype, params = _input_header(spec, index)
        if name in seen:
            raise ProtocolError(f"input {name!r} is given twice")
        seen.add(name)
        count = prod(shape)
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise ProtocolError(
                    f"input {name!r}: binary_data_size {size} runs past the end of the binary data "
                    f"({len(binary) - offset} bytes left)"
                )
            minimum = 4 * count if datatype == "BYTES" else count * NUMPY_DTYPES[datatype].itemsize
            if (datatype == "BYTES" and size < minimum) or (datatype != "BYTES" and size != minimum):
                needs = f"at least {minimum}" if datatype == "BYTES" else str(minimum)
                raise ProtocolError(
                    f"input {name!r}: shape {list(shape)} of {datatype} needs {needs} bytes, binary_data_size is {size}"
                )
            inputs.append(InputHead(name, datatype, shape, count, binary[offset : offset + size]))
            offset += size
        elif "data" in spec:
            inputs.append(InputHead(name, datatype, shape, count, None, spec["data"]))
        else:
            raise ProtocolError(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")

    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    binary_default = bool(params.get("binary_data_output", False))
    outputs = _outputs(doc.get("outputs"), binary_default)
    return RequestHead(inputs, _request_id(doc.get("id")), outputs, binary_default, params)


def _request_id(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ProtocolError("'id' must be a string")
    text = str(value)
    size = len(text.encode())  # orjson refuses lone surrogates: every parsed string encodes
    if size > MAX_ID_BYTES:
        raise ProtocolError(f"'id' is {size} bytes; at most {MAX_ID_BYTES}")
    return text


def _outputs(value: object, binary_default: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ProtocolError("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for spec in value:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError("each requested output needs a 'name'")
        name = spec["name"]
        if name in seen:  # each would be serialised again: a small request, a response many times its size
            raise ProtocolError(f"output {name!r} is requested twice")
        seen.add(name)
        out_params = spec.get("parameters") or {}
        if not isinstance(out_params, dict):
            raise ProtocolError(f"output {name!r}: 'parameters' must be an object")
        outputs.append(RequestedOutput(name, bool(out_params.get("binary_data", binary_default))))
    return outputs


def _input_header(spec, index: int) -> tuple[str, tuple[int, ...], str, dict]:
    if not isinstance(spec, dict):
        raise ProtocolError(f"inputs[{index}] must be an object")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"inputs[{index}] needs a 'name'")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(shape) > MAX_DIMS:
        raise ProtocolError(f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    if any(d > MAX_DIM for d in shape):
        raise ProtocolError(f"input {name!r}: shape {shape} has a dimension above {MAX_DIM}")
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(f"input {name!r}: 'parameters' must be an object")
    return name, tuple(shape), datatype, params


def decode_inputs(head: RequestHead) -> InferRequest:
    """Every input's elements as an array of its declared shape (ProtocolError naming the input): the work
    that grows with the request, done once the head passed the model's checks."""
    inputs = {}
    for item in head.inputs:
        if item.binary is not None:
            inputs[item.name] = _from_binary(item)
        else:
            inputs[item.name] = _from_json(item)
    return InferRequest(inputs, head.id, head.outputs, head.binary_output, head.parameters)


def text_bytes(item: InputHead) -> int:
    """The bytes of text a BYTES input carries (what tokenizing it costs grows with), read without decoding
    any element: its binary data's size less the length prefixes, or its JSON strings' lengths. A JSON
    `data` that is not strings counts as 0 here and is refused when decoded."""
    if item.binary is not None:
        return len(item.binary) - 4 * item.count
    total = 0
    for leaf in _leaves(item):
        if isinstance(leaf, str):
            total += len(leaf) if leaf.isascii() else len(leaf.encode())
    return total


def _leaves(item: InputHead) -> list:
    """The JSON data's elements in row-major order, from nested lists (as deep as the shape at most) or a flat
    list; ProtocolError naming the input for data nested deeper than its shape or ragged. Walks level by
    level, never recursing (a body nested a thousand deep is a 400, not a RecursionError). A level of lists
    must be lists only; the values' level is not scanned here: a list among values is refused when the values
    are converted."""
    data = item.data
    if not isinstance(data, list):
        return [data]
    level = data
    for _ in range(len(item.shape)):
        if not level or not isinstance(level[0], list):
            return level
        if not all(type(x) is list for x in level):  # a string or an object among lists is not a row
            raise ProtocolError(f"input {item.name!r}: data is ragged (lists and values at one level)")
        level = [x for sub in level for x in sub]
    if level and isinstance(level[0], list):
        raise ProtocolError(f"input {item.name!r}: data is nested deeper than its shape {list(item.shape)}")
    return level


def _from_binary(item: InputHead) -> np.ndarray:
    name, raw, count = item.name, item.binary, item.count
    if item.datatype == "BYTES":
        items = []
        pos = 0
        while pos < len(raw):
            if len(items) == count:
                raise ProtocolError(f"input {name!r}: shape {list(item.shape)} needs {count} BYTES elements, got more")
            if pos + 4 > len(raw):
                raise ProtocolError(f"input {name!r}: BYTES element {len(items)} has a truncated length prefix")
            (length,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + length > len(raw):
                raise ProtocolError(f"input {name!r}: BYTES element {len(items)} runs past its binary data")
            items.append(bytes(raw[pos : pos + length]))
            pos += length
        if len(items) != count:
            shape = list(item.shape)
            raise ProtocolError(f"input {name!r}: shape {shape} needs {count} BYTES elements, got {len(items)}")
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(item.shape)
    return np.frombuffer(raw, dtype=NUMPY_DTYPES[item.datatype]).reshape(item.shape)


def _from_json(item: InputHead) -> np.ndarray:
    name, datatype, count = item.name, item.datatype, item.count
    flat = _leaves(item)
    if len(flat) != count:
        raise ProtocolError(f"input {name!r}: shape {list(item.shape)} needs {count} elements, got {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"input {name!r}: BYTES data must be strings")
        array = np.empty(count, dtype=object)
        array[:] = [x.encode() for x in flat]
        return array.reshape(item.shape)
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind in "iu" and any(isinstance(x, float) for x in flat):
        raise ProtocolError(f"input {name!r}: {datatype} data must be integers")
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.asarray(flat, dtype=dtype)
    except FloatingPointError:  # JSON has no infinities: a value too large for FP16 or FP32
        raise ProtocolError(f"input {name!r}: a value is out of the range of {datatype}") from None
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(f"input {name!r}: data is not a (nested) list of {datatype} values") from None
    if array.shape != (count,):
        raise ProtocolError(f"input {name!r}: data is not a (nested) list of {datatype} values")
    return array.reshape(item.shape)


def encode_response(
    model_name: str,
    model_version: str,
    outputs: dict[str, np.ndarray],
    request: InferRequest,
) -> tuple[bytes, dict[str, str]]:
    """The response body and extra headers: plain JSON, or a JSON header followed by binary tensors."""
    if request.outputs is None:
        wanted = [RequestedOutput(name, request.binary_output) for name in outputs]
    else:
        wanted = request.outputs
    doc_outputs, chunks = [], []
    for out in wanted:
        array = outputs[out.name]
        datatype = datatype_of(array)
        entry = {"name": out.name, "datatype": datatype, "shape": list(array.shape)}
        if out.binary:
            raw = _to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in array.ravel()]
        else:
            entry["data"] = np.ascontiguousarray(array).ravel()
        doc_outputs.append(entry)
    doc = {"model_name": model_name, "model_version": model_version, "outputs": doc_outputs}
    if request.id is not None:
        doc["id"] = request.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.ravel():
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
