import pytest

from runtime.engine.cuda_device import CudaDevice
from runtime.engine.manifest import EngineEntry
from runtime.engine.signature import DimRange, Signature, TensorSpec
from runtime.engine.tensorrt_plan import (
    engine_filename,
    parse_engine_filename,
    plan_compatibility,
    profile_json,
    profile_shapes,
    tensorrt_supported,
)

SIG = Signature(
    inputs=(
        TensorSpec("input_ids", "int64", ("batch", "seq")),
        TensorSpec("image", "float32", ("batch", 3, 32)),
    ),
    outputs=(),
    dims={"batch": DimRange(1, 8, 64), "seq": DimRange(1, 128, 256)},
)


def test_profile_shapes_substitute_dims():
    shapes = profile_shapes(SIG)
    assert shapes["input_ids"] == ((1, 1), (8, 128), (64, 256))
    assert shapes["image"] == ((1, 3, 32), (8, 3, 32), (64, 3, 32))
    assert profile_json(SIG)["input_ids"] == {"min": [1, 1], "opt": [8, 128], "max": [64, 256]}


def test_engine_names_round_trip():
    name = engine_filename("fp16", "8.9", "10.7.0.23")
    assert name == "fp16-sm89-trt10.7.0.23.plan"
    parsed = parse_engine_filename(f"engines/{name}")
    assert (parsed.precision, parsed.cc, parsed.tensorrt_version) == ("fp16", "89", "10.7.0.23")
    with pytest.raises(ValueError):
        parse_engine_filename("model.plan")
    with pytest.raises(ValueError):
        engine_filename("fp16", "89", "10.7")


ENGINE = EngineEntry(
    file="engines/fp16-sm89-trt10.7.0.plan",
    backend="tensorrt",
    precision="fp16",
    compute_capability="8.9",
    tensorrt_version="10.7.0",
    profiles=[],
    gpu_name="NVIDIA L4",
    driver_version="550.54.15",
)


def gpu(cc: str = "8.9", name: str = "NVIDIA L4", driver: str | None = "550.54.15") -> CudaDevice:
    return CudaDevice(0, name, cc, 1 << 34, "GPU-1", "0000:01:00.0", driver)


@pytest.mark.parametrize(
    ("device", "trt", "ok", "reason"),
    [
        (gpu(), "10.7.0", True, "built on this GPU model (NVIDIA L4, driver 550.54.15) and TensorRT 10.7.0"),
        (gpu("9.0"), "10.7.0", False, "built for compute capability 8.9, this GPU is 9.0"),
        (gpu(), "10.8.0", False, "built with TensorRT 10.7.0, this machine has 10.8.0"),
        (gpu(), None, False, "tensorrt is not installed"),
        (None, "10.7.0", False, "no CUDA device"),
    ],
)
def test_plan_compatibility(device, trt, ok, reason):
    match = plan_compatibility(ENGINE, device, trt)
    assert match.ok is ok and match.warning is None
    assert reason in match.reason


@pytest.mark.parametrize(
    ("device", "said"),
    [
        (gpu(name="NVIDIA GeForce RTX 4090"), "this is NVIDIA GeForce RTX 4090, driver 550.54.15"),
        (gpu(driver="560.28.03"), "built on NVIDIA L4, driver 550.54.15, this is NVIDIA L4, driver 560.28.03"),
    ],
)
def test_same_capability_another_card_or_driver_is_tried_with_a_warning(device, said):
    match = plan_compatibility(ENGINE, device, "10.7.0")
    assert match.ok and said in match.warning and "falls back" in match.warning


@pytest.mark.parametrize(("version", "ok"), [("10.0.1.6", False), ("10.1.0.27", True), ("11.1.0", True), ("x", False)])
def test_tensorrt_versions(version, ok):
    assert tensorrt_supported(version)[0] is ok
