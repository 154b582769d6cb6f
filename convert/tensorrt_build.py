"""Native TensorRT engines from the ONNX files (TensorRT 10 and 11 Python API).

Networks are strongly typed (required by TensorRT 11, opted into on 10), so each precision is built
from its own ONNX variant and no precision builder flags are set. One optimization profile spans the
config's dims min/opt/max; the timing cache is kept between builds (convert.timing_cache). Each plan
records the GPU model and driver it was built on, so a server can tell an exact match from a plan built
on another card of the same compute capability.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from convert.failures import BackendUnavailable, ExportError
from convert.timing_cache import TimingCacheFile, cache_filename, default_root
from runtime.engine.cuda_device import CudaDevice, tensorrt_version, visible_device
from runtime.engine.manifest import EngineEntry
from runtime.engine.signature import Signature
from runtime.engine.tensorrt_plan import engine_filename, profile_json, profile_shapes, tensorrt_supported

log = logging.getLogger("trtserve.convert")


@dataclass(frozen=True)
class TensorRTOptions:
    workspace_mib: int = 4096
    optimization_level: int = 3  # TensorRT's default; 4-5 search longer for faster kernels
    timing_cache: Path | None = None  # default: ~/.cache/trtserve/timing-<gpu>-sm<cc>-trt<version>.cache


def tensorrt_target() -> tuple[CudaDevice, str]:
    """The GPU and TensorRT version engines would be built for; BackendUnavailable says what is missing."""
    version = tensorrt_version()
    if version is None:
        raise BackendUnavailable(
            "tensorrt is not installed (it needs an NVIDIA GPU: make install picks trtserve[gpu] there)"
        )
    ok, why = tensorrt_supported(version)
    if not ok:
        raise BackendUnavailable(why)
    device, why = visible_device()
    if device is None:
        raise BackendUnavailable(why)
    return device, version


def default_timing_cache(device: CudaDevice, version: str) -> Path:
    return default_root() / cache_filename(device, version)


def build_engine(
    onnx_path: Path, signature: Signature, precision: str, out_dir: Path, options: TensorRTOptions
) -> EngineEntry:
    """Build one plan into out_dir/engines/; return its manifest entry."""
    device, version = tensorrt_target()
    import tensorrt as trt

    from runtime.engine.backends.tensorrt import trt_logger

    logger = trt_logger()
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path.name}: TensorRT's ONNX parser refused the model: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.optimization_level
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 matmuls would not meet fp32 tolerances

    timing_cache = TimingCacheFile(options.timing_cache or default_timing_cache(device, version))
    timing_cache.attach(config)

    profile = builder.create_optimization_profile()
    shapes = profile_shapes(signature)
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path.name}: TensorRT failed to build the {precision} engine (see the log above)")

    file = Path("engines") / engine_filename(precision, device.compute_capability, version)
    (out_dir / file).parent.mkdir(parents=True, exist_ok=True)
    (out_dir / file).write_bytes(bytes(serialized))
    log.info("tensorrt: built %s for %s", file, device.name)
    timing_cache.save(config)  # after the plan is safe: a cache problem only warns
    return EngineEntry(
        file=file.as_posix(),
        backend="tensorrt",
        precision=precision,
        compute_capability=device.compute_capability,
        tensorrt_version=version,
        profiles=[profile_json(signature)],
        gpu_name=device.name,
        driver_version=device.driver_version,
    )
