"""Pure TensorRT bookkeeping: engine file names, optimization profiles, and whether a plan can run here.

Nothing here imports tensorrt, so the decisions are testable on any machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


def plan_compatibility(engine: EngineEntry, device_cc: str | None, tensorrt_version: str | None) -> tuple[bool, str]:
    """Can the manifest's engine entry run here? Returns (ok, reason), the reason fit for a log line.

    A plan is only guaranteed to deserialize with the exact TensorRT version that built it, on a GPU of
    the same compute capability (we build neither version- nor hardware-compatible plans).
    """
    if tensorrt_version is None:
        return False, "tensorrt is not installed"
    if device_cc is None:
        return False, "no CUDA device"
    if engine.compute_capability != device_cc:
        return (
            False,
            f"{engine.file} was built for compute capability {engine.compute_capability}, this GPU is {device_cc}",
        )
    if engine.tensorrt_version != tensorrt_version:
        return (
            False,
            f"{engine.file} was built with TensorRT {engine.tensorrt_version}, this machine has {tensorrt_version}",
        )
    return True, f"{engine.file} matches this GPU (sm{cc_tag(device_cc)}) and TensorRT {tensorrt_version}"
