"""Pure TensorRT bookkeeping: engine file names, optimization profiles, and whether a plan can run here.

Nothing here imports tensorrt, so the decisions are testable on any machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.engine.cuda_device import CudaDevice
from runtime.engine.manifest import EngineEntry
from runtime.engine.signature import Signature

_PLAN_NAME = re.compile(r"^(?P<precision>[a-z0-9]+)-sm(?P<cc>\d+)-trt(?P<trt>\d+(?:\.\d+)*)\.plan$")


def cc_tag(compute_capability: str) -> str:
    """'8.9' -> '89', as in sm89."""
    major, _, minor = compute_capability.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(f"compute capability must look like '8.9', got {compute_capability!r}")
    return f"{major}{minor}"


def engine_filename(precision: str, compute_capability: str, tensorrt_version: str) -> str:
    """<precision>-sm<cc>-trt<version>.plan, the name of a plan under a version's engines/."""
    return f"{precision}-sm{cc_tag(compute_capability)}-trt{tensorrt_version}.plan"


@dataclass(frozen=True)
class PlanName:
    precision: str
    cc: str  # as in the file name: '89'
    tensorrt_version: str


def parse_engine_filename(filename: str) -> PlanName:
    match = _PLAN_NAME.match(filename.rsplit("/", 1)[-1])
    if not match:
        raise ValueError(f"{filename!r} is not named <precision>-sm<cc>-trt<version>.plan")
    return PlanName(match["precision"], match["cc"], match["trt"])


def profile_shapes(
    signature: Signature,
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """One optimization profile: (min, opt, max) shape of every input from the dims' min/opt/max."""
    dims = signature.dims
    low = signature.shapes_at({k: v.min for k, v in dims.items()})
    opt = signature.shapes_at({k: v.opt for k, v in dims.items()})
    high = signature.shapes_at({k: v.max for k, v in dims.items()})
    return {name: (low[name], opt[name], high[name]) for name in low}


def profile_json(signature: Signature) -> dict[str, dict[str, list[int]]]:
    """The profile as manifests record it: {input: {min: [...], opt: [...], max: [...]}}."""
    return {
        name: {"min": list(low), "opt": list(opt), "max": list(high)}
        for name, (low, opt, high) in profile_shapes(signature).items()
    }


@dataclass(frozen=True)
class PlanMatch:
    ok: bool  # the plan can be tried here
    reason: str  # fit for a log line
    warning: str | None = None  # tried, but not on exactly the GPU and driver it was built on


def plan_compatibility(engine: EngineEntry, device: CudaDevice | None, tensorrt_version: str | None) -> PlanMatch:
    """Can the manifest's engine entry run here?

    A plan deserializes only with the exact TensorRT version that built it, on a GPU of the same compute
    capability (we build neither version- nor hardware-compatible plans): anything else is refused. On
    another GPU model of that capability (L4 and RTX 4090, H100 and H200) or another driver, it usually
    loads but its kernels were timed elsewhere: tried, with a warning (and `auto` prefers an exact plan).
    """
    if tensorrt_version is None:
        return PlanMatch(False, "tensorrt is not installed")
    if device is None:
        return PlanMatch(False, "no CUDA device")
    cc = device.compute_capability
    if engine.compute_capability != cc:
        return PlanMatch(
            False, f"{engine.file} was built for compute capability {engine.compute_capability}, this GPU is {cc}"
        )
    if engine.tensorrt_version != tensorrt_version:
        return PlanMatch(
            False,
            f"{engine.file} was built with TensorRT {engine.tensorrt_version}, this machine has {tensorrt_version}",
        )
    here = f"{device.name}, driver {device.driver_version or 'unknown'}"
    built = f"{engine.gpu_name or 'an unrecorded GPU'}, driver {engine.driver_version or 'unknown'}"
    if engine.gpu_name == device.name and engine.driver_version == device.driver_version:
        return PlanMatch(True, f"{engine.file} was built on this GPU model ({here}) and TensorRT {tensorrt_version}")
    return PlanMatch(
        True,
        f"{engine.file} matches this GPU's compute capability ({cc}) and TensorRT {tensorrt_version}",
        f"{engine.file} was built on {built}, this is {here}: same compute capability and TensorRT version, "
        "so it should load, with kernels timed on the other card; if it does not, auto falls back to the next "
        "backend",
    )


MIN_TENSORRT = (10, 1)  # device_memory_size_v2 and the v3 execution API as used here


def tensorrt_supported(version: str) -> tuple[bool, str]:
    """Is this TensorRT version one trtserve runs with? (ok, reason)"""
    try:
        parts = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return False, f"cannot read TensorRT's version {version!r}"
    if parts < MIN_TENSORRT:
        wanted = ".".join(map(str, MIN_TENSORRT))
        return False, f"TensorRT {version} is too old: trtserve needs {wanted} or newer (pip install 'trtserve[gpu]')"
    return True, f"TensorRT {version}"
