"""What CUDA device this process can use, found without torch (the serving install has none)."""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    compute_capability: str  # '8.9'
    total_memory: int  # bytes


@functools.cache
def probe(index: int = 0) -> tuple[CudaDevice | None, str]:
    """(device, '') when device `index` is usable, else (None, why not)."""
    try:
        import pynvml
    except ImportError:
        return None, "no CUDA device (nvidia-ml-py is not installed to look for one)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return None, f"no CUDA device ({e})"
    try:
        if pynvml.nvmlDeviceGetCount() <= index:
            return None, "no CUDA device"
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
    finally:
        pynvml.nvmlShutdown()
    name = name.decode() if isinstance(name, bytes) else name
    return CudaDevice(index, name, f"{major}.{minor}", int(memory)), ""


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__
