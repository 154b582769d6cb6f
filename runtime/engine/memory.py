"""What memory a model takes in a replica, measured, and what the machine has left.

A model's footprint is the difference across loading it and warming it up at its largest batch: host
RSS (the engine, ONNX Runtime's arena, tokenizer, buffers) and, on a GPU, this process's device memory
(NVML's per-process figure, which includes TensorRT's engine and activation memory and ORT's CUDA arena;
torch's reserved bytes when NVML cannot say). Measured, not estimated from file sizes: an ONNX file of
90 MB can take 300 MB once its session and arena exist.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

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


@contextmanager
def _nvml():
    """pynvml, initialised, or None where there is no NVML (no driver, or nvidia-ml-py not installed)."""
    try:
        import pynvml
    except ImportError:
        yield None
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        yield None
        return
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def gpu_process_bytes(index: int = 0) -> int | None:
    """Device memory this process holds on GPU `index`, from NVML; None where NVML cannot tell."""
    with _nvml() as nvml:
        if nvml is None:
            return None
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid == os.getpid() and process.usedGpuMemory is not None:
                    return int(process.usedGpuMemory)
            return 0
        except nvml.NVMLError:  # e.g. no permission to see per-process figures inside a container
            return None


def gpu_free_total(index: int = 0) -> tuple[int, int] | None:
    with _nvml() as nvml:
        if nvml is None:
            return None
        try:
            info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index))
            return int(info.free), int(info.total)
        except nvml.NVMLError:
            return None


def available_bytes(on_gpu: bool, index: int = 0) -> int | None:
    """What is left where a model allocates: GPU `index`'s free memory, or the host's available memory."""
    if on_gpu:
        free_total = gpu_free_total(index)
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

    def __init__(self, device_index: int = 0) -> None:
        self.device_index = device_index
        self._host = host_rss_bytes() or 0
        self._device = gpu_process_bytes(device_index)

    def finish(self, engine, max_batch_size: int) -> Footprint:
        host_after = host_rss_bytes()
        host = max(0, (host_after or 0) - self._host)
        device, method = None, "none"
        if engine.device.startswith("cuda"):
            after = gpu_process_bytes(self.device_index)
            if after is not None and self._device is not None:
                device, method = max(0, after - self._device), "nvml-process"
            else:
                reported = engine.memory().get("device_bytes")
                if reported is not None:
                    device, method = int(reported), f"{engine.backend}-reported"
        return Footprint(host, device, method, max_batch_size, host_after)
