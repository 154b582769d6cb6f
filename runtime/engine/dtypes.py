"""One table for tensor element types across configs, numpy, ONNX and the KServe v2 protocol."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str  # as written in model configs and manifests
    numpy: np.dtype
    onnx: int  # onnx.TensorProto enum value
    kserve: str  # Open Inference Protocol datatype

    @property
    def is_float(self) -> bool:
        return self.numpy.kind == "f"


# onnx.TensorProto values are spelled out so this module never needs to import onnx.
_TABLE = [
    DType("float32", np.dtype(np.float32), 1, "FP32"),
    DType("float16", np.dtype(np.float16), 10, "FP16"),
    DType("int64", np.dtype(np.int64), 7, "INT64"),
    DType("int32", np.dtype(np.int32), 6, "INT32"),
    DType("int8", np.dtype(np.int8), 3, "INT8"),
    DType("uint8", np.dtype(np.uint8), 2, "UINT8"),
    DType("bool", np.dtype(np.bool_), 9, "BOOL"),
]
BY_NAME = {d.name: d for d in _TABLE}
_BY_NUMPY = {d.numpy: d for d in _TABLE}
_BY_ONNX = {d.onnx: d for d in _TABLE}
_BY_KSERVE = {d.kserve: d for d in _TABLE}

NAMES = tuple(BY_NAME)


def from_name(name: str) -> DType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(NAMES)}") from None


def from_numpy(dtype: np.dtype | type) -> DType:
    try:
        return _BY_NUMPY[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"unsupported numpy dtype {np.dtype(dtype)}; expected one of {', '.join(NAMES)}") from None


def name_of(dtype: np.dtype | str) -> str:
    """The dtype's name in this table (an Open Inference Protocol datatype or a numpy dtype), or, for one the
    table lacks, its own name: what an error message shows."""
    if isinstance(dtype, str):
        known = _BY_KSERVE.get(dtype)
        return known.name if known is not None else dtype
    known = _BY_NUMPY.get(np.dtype(dtype))
    return known.name if known is not None else str(np.dtype(dtype))


def from_onnx(elem_type: int) -> DType:
    try:
        return _BY_ONNX[elem_type]
    except KeyError:
        raise ValueError(f"unsupported ONNX element type {elem_type}") from None


def from_kserve(datatype: str) -> DType:
    try:
        return _BY_KSERVE[datatype]
    except KeyError:
        raise ValueError(f"no model dtype for the Open Inference Protocol datatype {datatype!r}") from None
