import pytest

from runtime.engine.manifest import EngineEntry
from runtime.engine.signature import DimRange, Signature, TensorSpec
from runtime.engine.tensorrt_plan import (
    engine_filename,
    parse_engine_filename,
    plan_compatibility,
    profile_json,
    profile_shapes,
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
)


@pytest.mark.parametrize(
    ("cc", "trt", "ok", "reason"),
    [
        ("8.9", "10.7.0", True, "matches this GPU (sm89) and TensorRT 10.7.0"),
        ("9.0", "10.7.0", False, "built for compute capability 8.9, this GPU is 9.0"),
        ("8.9", "10.8.0", False, "built with TensorRT 10.7.0, this machine has 10.8.0"),
        ("8.9", None, False, "tensorrt is not installed"),
        (None, "10.7.0", False, "no CUDA device"),
    ],
)
def test_plan_compatibility(cc, trt, ok, reason):
    got, why = plan_compatibility(ENGINE, cc, trt)
    assert got is ok
    assert reason in why
