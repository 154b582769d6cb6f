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
    """A request the protocol cannot accept; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class RequestedOutput:
    name: str
    binary: bool


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
        raise ProtocolError(f"dtype {array.dtype} has no Open Inference Protocol datatype", 500) from None


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse an infer request; raise ProtocolError (400) naming the input at fault."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
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

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, spec in enumerate(raw_inputs):
        name, shape, datatype, params = _input_header(spec, index)
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given twice")
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
            inputs[name] = _from_binary(name, datatype, shape, count, binary[offset : offset + size])
            offset += size
        elif "data" in spec:
            inputs[name] = _from_json(name, datatype, shape, count, spec["data"])
        else:
            raise ProtocolError(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")

    outputs = None
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    binary_default = bool(params.get("binary_data_output", False))
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise ProtocolError("'outputs' must be a list")
        outputs = []
        for spec in doc["outputs"]:
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise ProtocolError("each requested output needs a 'name'")
            out_params = spec.get("parameters") or {}
            if not isinstance(out_params, dict):
                raise ProtocolError(f"output {spec['name']!r}: 'parameters' must be an object")
            outputs.append(RequestedOutput(spec["name"], bool(out_params.get("binary_data", binary_default))))
    request_id = doc.get("id")
    return InferRequest(inputs, str(request_id) if request_id is not None else None, outputs, binary_default, params)


def _input_header(spec, index: int) -> tuple[str, list[int], str, dict]:
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
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(f"input {name!r}: 'parameters' must be an object")
    return name, shape, datatype, params


def _from_binary(name: str, datatype: str, shape: list[int], count: int, raw: memoryview) -> np.ndarray:
    if datatype == "BYTES":
        items = []
        pos = 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise ProtocolError(f"input {name!r}: BYTES element {len(items)} has a truncated length prefix")
            (length,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + length > len(raw):
                raise ProtocolError(f"input {name!r}: BYTES element {len(items)} runs past its binary data")
            items.append(bytes(raw[pos : pos + length]))
            pos += length
        if len(items) != count:
            raise ProtocolError(f"input {name!r}: shape {shape} needs {count} BYTES elements, got {len(items)}")
        return np.array(items, dtype=object).reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(
            f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, "
            f"binary_data_size is {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _from_json(name: str, datatype: str, shape: list[int], count: int, data) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = list(_flatten(data))
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"input {name!r}: BYTES data must be strings")
        if len(flat) != count:
            raise ProtocolError(f"input {name!r}: shape {shape} needs {count} elements, got {len(flat)}")
        return np.array([x.encode() for x in flat], dtype=object).reshape(shape)
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.asarray(data, dtype=NUMPY_DTYPES[datatype])
    except FloatingPointError:  # JSON has no infinities: a value too large for FP16 or FP32
        raise ProtocolError(f"input {name!r}: a value is out of the range of {datatype}") from None
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(f"input {name!r}: data is not a (nested) list of {datatype} values") from None
    if array.size != count:
        raise ProtocolError(f"input {name!r}: shape {shape} needs {count} elements, got {array.size}")
    if datatype != "BOOL" and array.dtype.kind in "iu" and any(isinstance(x, float) for x in _flatten(data)):
        raise ProtocolError(f"input {name!r}: {datatype} data must be integers")
    return array.reshape(shape)


def _flatten(items):
    for item in items:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


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
