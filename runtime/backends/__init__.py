"""Backends register here by name; each is imported only when first asked for."""

from __future__ import annotations

import importlib

from runtime.backends.base import Engine
from runtime.errors import BackendUnavailable

_REGISTRY: dict[str, str] = {
    "onnxruntime": "runtime.backends.onnxruntime:OnnxRuntimeEngine",
    "tensorrt": "runtime.backends.tensorrt:TensorRTEngine",
    "torch": "runtime.backends.torch:TorchEngine",
}


def register_backend(name: str, target: str) -> None:
    """Register `module:Class` (an Engine subclass) under `name`."""
    _REGISTRY[name] = target


def engine_class(name: str) -> type[Engine]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r}; known: {', '.join(_REGISTRY)}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["Engine", "engine_class", "register_backend"]
