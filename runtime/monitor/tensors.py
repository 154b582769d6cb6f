"""Open Inference Protocol datatypes of numpy arrays, as captures record them."""

from __future__ import annotations

import numpy as np

_DATATYPES = {
    "b": "BOOL",
    "u1": "UINT8",
    "u2": "UINT16",
    "u4": "UINT32",
    "u8": "UINT64",
    "i1": "INT8",
    "i2": "INT16",
    "i4": "INT32",
    "i8": "INT64",
    "f2": "FP16",
    "f4": "FP32",
    "f8": "FP64",
}
NUMPY = {v: np.dtype(k if k != "b" else "?") for k, v in _DATATYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    key = "b" if array.dtype.kind == "b" else f"{array.dtype.kind}{array.dtype.itemsize}"
    return _DATATYPES.get(key, "BYTES")
