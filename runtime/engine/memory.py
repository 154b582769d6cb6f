"""What memory a model takes in a replica, measured, and what the machine has left.

A model's footprint is the difference across loading it and warming it up at its largest batch: host
RSS (the engine, ONNX Runtime's arena, tokenizer, buffers) and, on a GPU, this process's device memory
(NVML's per-process figure, which includes TensorRT's engine and activation memory and ORT's CUDA arena;
torch's reserved bytes when NVML cannot say). Measured, not estimated from file sizes: an ONNX file of
90 MB can take 300 MB once its session and arena exist.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.engine.cuda_device import CudaDevice, nvml, nvml_handle, visible_device

GiB = 2**30


def host_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def host_available_bytes(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Memory a new allocation can still get: the kernel's MemAvailable, capped by this cgroup's limit."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError):
        pass
    try:
        limit = (cgroup_root / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup_root / "memory.current").read_text())
            left = max(0, int(limit) - used)
            available = left if available is None else min(available, left)
    except (OSError, ValueError):
        pass
    return available


def _ask_nvml(device: CudaDevice | None, question):
    """question(pynvml, handle) for `device` (default: the CUDA device this process uses); None where there is
    no device, no NVML, or NVML cannot answer (e.g. per-process figures hidden inside a container)."""
    device = device or visible_device()[0]
    if device is None:
        return None
    with nvml() as lib:
        handle = nvml_handle(lib, device) if lib is not None else None
        if handle is None:
            return None
        try:
            return question(lib, handle)
        except lib.NVMLError:
            return None


def gpu_process_bytes(device: CudaDevice | None = None) -> int | None:
    """Device memory this process holds on `device` (default: the CUDA device it uses), from NVML."""

    def held(lib, handle) -> int:
        for process in lib.nvmlDeviceGetComputeRunningProcesses(handle):
            if process.pid == os.getpid() and process.usedGpuMemory is not None:
                return int(process.usedGpuMemory)
        return 0

    return _ask_nvml(device, held)


def gpu_free_total(device: CudaDevice | None = None) -> tuple[int, int] | None:
    """(free, total) bytes of `device` (default: the CUDA device this process uses), from NVML."""

    def free_total(lib, handle) -> tuple[int, int]:
        info = lib.nvmlDeviceGetMemoryInfo(handle)
        return int(info.free), int(info.total)

    return _ask_nvml(device, free_total)


def available_bytes(on_gpu: bool) -> int | None:
    """What is left where a model allocates: the free memory of the GPU this process uses, or the host's."""
    if on_gpu:
        free_total = gpu_free_total()
        return free_total[0] if free_total else None
    return host_available_bytes()


@dataclass
class Footprint:
    """One model's memory in a replica, after warm-up at its largest batch."""

    host_bytes: int  # host RSS the model added
    device_bytes: int | None  # GPU memory the model added; None on the CPU
    device_method: str  # how device_bytes was measured ("nvml-process", "torch-reserved", "none")
    max_batch_size: int
    host_rss_bytes: int | None = None  # the whole process after warm-up

    def to_dict(self) -> dict:
        return asdict(self)


class FootprintMeter:
    """Snapshot before loading a model, `finish` after warming it up: the difference is its footprint."""

    def __init__(self) -> None:
        self._host = host_rss_bytes() or 0
        self._device = gpu_process_bytes()

    def finish(self, engine, max_batch_size: int) -> Footprint:
        host_after = host_rss_bytes()
        host = max(0, (host_after or 0) - self._host)
        device, method = None, "none"
        if engine.device.startswith("cuda"):
            after = gpu_process_bytes()
            if after is not None and self._device is not None:
                device, method = max(0, after - self._device), "nvml-process"
            else:
                reported = engine.memory().get("device_bytes")
                if reported is not None:
                    device, method = int(reported), f"{engine.backend}-reported"
        return Footprint(host, device, method, max_batch_size, host_after)
