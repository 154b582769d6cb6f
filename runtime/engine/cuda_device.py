"""The CUDA device this process uses, and the same card in NVML, found without torch.

CUDA numbers only the GPUs `CUDA_VISIBLE_DEVICES` lets a process see, from 0 (Ray sets it per replica);
NVML numbers every GPU of the node in PCI bus order and ignores the variable. So "GPU 0" for CUDA can be
NVML's GPU 3, and a replica that asked NVML for index 0 watched another card's memory. The device's
identity (name, compute capability, UUID, PCI bus id) comes from the CUDA runtime (cuda-python), which
applies `CUDA_VISIBLE_DEVICES` itself; NVML (free memory, per-process memory, the driver) is then asked
for that card by UUID or bus id, never by index.

Without cuda-python (an ONNX Runtime-only install), `CUDA_VISIBLE_DEVICES` is applied here: UUIDs
(`GPU-...`, prefixes allowed, as CUDA allows) exactly; indices in NVML's PCI order, which is CUDA's order
when `CUDA_DEVICE_ORDER=PCI_BUS_ID` or every GPU of the node is the same model (a warning says when neither
holds). MIG instances need cuda-python to be identified.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import re
from dataclasses import dataclass

from runtime.engine.errors import BackendUnavailable, TrtserveError

log = logging.getLogger("trtserve.runtime")


@dataclass(frozen=True)
class CudaDevice:
    ordinal: int  # CUDA's number for it in this process: 0 is the first device CUDA_VISIBLE_DEVICES leaves
    name: str  # 'NVIDIA L4'
    compute_capability: str  # '8.9'
    total_memory: int  # bytes
    uuid: str | None = None  # 'GPU-5b1d...' as nvidia-smi prints it
    pci_bus_id: str | None = None  # '0000:3b:00.0'
    driver_version: str | None = None  # the NVIDIA driver, '550.54.15'; None where NVML cannot say

    @property
    def slug(self) -> str:
        """The GPU model as a file name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "gpu"


def visible_device(ordinal: int = 0) -> tuple[CudaDevice | None, str]:
    """(device, '') for CUDA device `ordinal` as this process sees it, else (None, why not)."""
    return _visible_device(ordinal, os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("CUDA_DEVICE_ORDER"))


def forget_devices() -> None:
    """Look again on the next call (the answer is kept per process and CUDA_VISIBLE_DEVICES value)."""
    _visible_device.cache_clear()


@functools.cache
def _visible_device(ordinal: int, visible: str | None, order: str | None) -> tuple[CudaDevice | None, str]:
    runtime = cudart_or_none()
    if runtime is not None:
        return _from_cudart(runtime, ordinal)
    return _from_nvml(ordinal, visible, order)


def cudart():
    """cuda-python's CUDA runtime module; BackendUnavailable where cuda-python is not installed."""
    runtime = cudart_or_none()
    if runtime is None:
        raise BackendUnavailable("cuda-python is not installed (pip install 'trtserve[gpu]')")
    return runtime


def cudart_or_none():
    for name in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python >= 12.6, then older
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def check(result, what: str = "CUDA call"):
    """cuda-python returns (error, *values): raise on an error, else return the value(s)."""
    err, *values = result
    if int(err) != 0:
        raise TrtserveError(f"{what} failed: {_error_name(err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _error_name(err) -> str:
    return getattr(err, "name", None) or f"CUDA error {int(err)}"


def _from_cudart(runtime, ordinal: int) -> tuple[CudaDevice | None, str]:
    err, count = runtime.cudaGetDeviceCount()
    if int(err) != 0:
        return None, f"no CUDA device ({_error_name(err)})"
    if count <= ordinal:
        hidden = " (CUDA_VISIBLE_DEVICES hides the rest)" if os.environ.get("CUDA_VISIBLE_DEVICES") is not None else ""
        return None, f"no CUDA device {ordinal}: this process sees {count}{hidden}"
    prop = check(runtime.cudaGetDeviceProperties(ordinal), "cudaGetDeviceProperties")
    raw = prop.name if isinstance(prop.name, bytes) else str(prop.name).encode()
    name = raw.split(b"\x00", 1)[0].decode(errors="replace").strip()  # a fixed-size, NUL-terminated field
    uuid = format_uuid(bytes(prop.uuid.bytes))
    bus_id = f"{int(prop.pciDomainID):04x}:{int(prop.pciBusID):02x}:{int(prop.pciDeviceID):02x}.0"
    driver = None
    with nvml() as lib:
        if lib is not None:
            with contextlib.suppress(lib.NVMLError):
                driver = _text(lib.nvmlSystemGetDriverVersion())
    device = CudaDevice(
        ordinal=ordinal,
        name=name,
        compute_capability=f"{int(prop.major)}.{int(prop.minor)}",
        total_memory=int(prop.totalGlobalMem),
        uuid=uuid,
        pci_bus_id=bus_id,
        driver_version=driver,
    )
    return device, ""


def _from_nvml(ordinal: int, visible: str | None, order: str | None) -> tuple[CudaDevice | None, str]:
    with nvml() as lib:
        if lib is None:
            return None, "no CUDA device (neither cuda-python nor a working NVML is there to look for one)"
        try:
            return _nvml_device(lib, ordinal, visible, order)
        except lib.NVMLError as e:
            return None, f"no CUDA device (NVML: {e})"


def _nvml_device(lib, ordinal: int, visible: str | None, order: str | None) -> tuple[CudaDevice | None, str]:
    """The device CUDA would number `ordinal`, found in NVML alone by applying CUDA_VISIBLE_DEVICES here."""
    handles = [lib.nvmlDeviceGetHandleByIndex(i) for i in range(lib.nvmlDeviceGetCount())]
    uuids = [_text(lib.nvmlDeviceGetUUID(h)) for h in handles]
    picked = visible_indices(visible, uuids)
    if isinstance(picked, str):
        return None, picked
    if len(picked) <= ordinal:
        return None, f"no CUDA device {ordinal}: CUDA_VISIBLE_DEVICES={visible!r} leaves {len(picked)}"
    names = [_text(lib.nvmlDeviceGetName(h)) for h in handles]
    if order != "PCI_BUS_ID" and visible and not visible.strip().startswith("GPU-") and len(set(names)) > 1:
        log.warning(
            "CUDA_VISIBLE_DEVICES=%s read in PCI bus order without cuda-python; CUDA orders the fastest GPU "
            "first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, and this node mixes %s",
            visible,
            ", ".join(sorted(set(names))),
        )
    index = picked[ordinal]
    handle = handles[index]
    major, minor = lib.nvmlDeviceGetCudaComputeCapability(handle)
    device = CudaDevice(
        ordinal=ordinal,
        name=names[index],
        compute_capability=f"{major}.{minor}",
        total_memory=int(lib.nvmlDeviceGetMemoryInfo(handle).total),
        uuid=uuids[index],
        pci_bus_id=_text(lib.nvmlDeviceGetPciInfo(handle).busId).lower(),
        driver_version=_text(lib.nvmlSystemGetDriverVersion()),
    )
    return device, ""


def visible_indices(visible: str | None, uuids: list[str]) -> list[int] | str:
    """The NVML indices CUDA_VISIBLE_DEVICES leaves, in CUDA's order, or why none can be told.

    As CUDA reads it: a comma-separated list of indices or UUIDs (a unique prefix is enough), read up to
    the first entry that names no device; unset means every device.
    """
    if visible is None:
        return list(range(len(uuids)))
    picked: list[int] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.startswith("MIG-"):
            return f"CUDA_VISIBLE_DEVICES names a MIG instance ({entry}); identifying it needs cuda-python"
        if entry.isdigit():
            index = int(entry)
            if index >= len(uuids):
                break
        else:
            matches = [i for i, uuid in enumerate(uuids) if entry and uuid.startswith(entry)]
            if len(matches) != 1:
                break
            index = matches[0]
        if index in picked:
            break
        picked.append(index)
    if not picked:
        return f"no CUDA device (CUDA_VISIBLE_DEVICES={visible!r} leaves none)"
    return picked


def format_uuid(raw: bytes) -> str:
    """16 bytes of cudaUUID_t -> 'GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx', as NVML and nvidia-smi write it."""
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@contextlib.contextmanager
def nvml():
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


def nvml_handle(lib, device: CudaDevice):
    """NVML's handle for `device`, by UUID, else by PCI bus id (a MIG instance: its parent GPU); None where
    NVML knows neither."""
    for lookup, key in (
        (lib.nvmlDeviceGetHandleByUUID, device.uuid),
        (lib.nvmlDeviceGetHandleByPciBusId, device.pci_bus_id),
    ):
        if key:
            try:
                return lookup(key)
            except lib.NVMLError:
                continue
    return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__
