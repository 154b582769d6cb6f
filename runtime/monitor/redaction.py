"""What of a request's tensors may reach disk: dropped inputs never do; hashed ones are replaced by a
keyed hash (HMAC-SHA256 over datatype, shape and bytes), equal for equal inputs, not reversible without
the key, and the key never written anywhere."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from runtime.monitor.tensors import datatype_of


@dataclass(frozen=True)
class Redactor:
    drop: frozenset[str] = frozenset()
    hash: frozenset[str] = frozenset()
    key: bytes = b""

    def __post_init__(self) -> None:
        if self.hash and not self.key:
            raise ValueError("hashing inputs needs a key")
        both = self.drop & self.hash
        if both:
            raise ValueError(f"inputs {sorted(both)} are both dropped and hashed")

    def tensors(self, arrays: dict[str, np.ndarray], redact: bool = True) -> list[dict]:
        """Capture records of `arrays` (name -> array), minus what is dropped, hashed ones replaced."""
        records = []
        for name, array in arrays.items():
            if redact and name in self.drop:
                continue
            datatype = datatype_of(array)
            record = {"name": name, "datatype": datatype, "shape": list(array.shape)}
            if redact and name in self.hash:
                record["hash"] = self.digest(datatype, array)
            elif datatype == "BYTES":
                record["text"] = [_text(v) for v in array.reshape(-1)]
            else:
                record["values"] = array
            records.append(record)
        return records

    def digest(self, datatype: str, array: np.ndarray) -> str:
        mac = hmac.new(self.key, f"{datatype}{list(array.shape)}".encode(), hashlib.sha256)
        if datatype == "BYTES":
            for item in _items(array):
                mac.update(len(item).to_bytes(8, "little"))
                mac.update(item)
        else:
            mac.update(np.ascontiguousarray(array).tobytes())
        return mac.hexdigest()


def _items(array: np.ndarray) -> Iterable[bytes]:
    for v in array.reshape(-1):
        yield v if isinstance(v, bytes) else str(v).encode()


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
