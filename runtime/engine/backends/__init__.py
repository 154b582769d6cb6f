"""Backends register here by name; each is imported only when first asked for.

`auto` tries the backends registered with a rank, lowest first: a TensorRT plan built for this GPU, then
ONNX Runtime. A backend registered without one (torch, the eager baseline) runs only when asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from runtime.engine.backends.base import Engine, EngineOptions, EngineSpec
from runtime.engine.errors import BackendUnavailable


@dataclass(frozen=True)
class _Registered:
    target: str  # module:Class
    auto_rank: int | None


_REGISTRY: dict[str, _Registered] = {
    "tensorrt": _Registered("runtime.engine.backends.tensorrt:TensorRTEngine", 0),
    "onnxruntime": _Registered("runtime.engine.backends.onnxruntime:OnnxRuntimeEngine", 1),
    "torch": _Registered("runtime.engine.backends.torch:TorchEngine", None),
}


def register_backend(name: str, target: str, auto_rank: int | None = None) -> None:
    """Register `module:Class` (an Engine subclass) under `name`; with `auto_rank`, backend="auto" tries
    it too, in rank order (tensorrt is 0, onnxruntime 1)."""
    _REGISTRY[name] = _Registered(target, auto_rank)


def known_backends() -> list[str]:
    return list(_REGISTRY)


def auto_backends() -> list[str]:
    """What backend="auto" tries, in order."""
    ranked = [(r.auto_rank, name) for name, r in _REGISTRY.items() if r.auto_rank is not None]
    return [name for _, name in sorted(ranked)]


def engine_class(name: str) -> type[Engine]:
    try:
        target = _REGISTRY[name].target
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise BackendUnavailable(f"backend {name!r}: {target} is not an Engine subclass")
    return cls


__all__ = [
    "Engine",
    "EngineOptions",
    "EngineSpec",
    "auto_backends",
    "engine_class",
    "known_backends",
    "register_backend",
]
