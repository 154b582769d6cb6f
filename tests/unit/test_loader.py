"""backend=auto's choice among a manifest's engines, with the GPU and TensorRT version faked."""

import pytest

from runtime import loader
from runtime.cuda_device import CudaDevice

PLANS = [
    {
        "file": "engines/fp32-sm89-trt10.7.0.plan",
        "backend": "tensorrt",
        "precision": "fp32",
        "compute_capability": "8.9",
        "tensorrt_version": "10.7.0",
    },
    {
        "file": "engines/fp16-sm89-trt10.7.0.plan",
        "backend": "tensorrt",
        "precision": "fp16",
        "compute_capability": "8.9",
        "tensorrt_version": "10.7.0",
    },
    {
        "file": "model.onnx",
        "backend": "onnxruntime",
        "precision": "fp32",
        "compute_capability": None,
        "tensorrt_version": None,
    },
]


@pytest.fixture
def machine(monkeypatch):
    def set_machine(cc, trt):
        device = CudaDevice(0, "Fake GPU", cc, 1 << 34) if cc else None
        monkeypatch.setattr(loader, "probe", lambda: (device, "" if device else "no CUDA device"))
        monkeypatch.setattr(loader, "tensorrt_version", lambda: trt)

    return set_machine


def test_matching_gpu_picks_the_fp16_plan(machine):
    machine("8.9", "10.7.0")
    entry, [reason] = loader._pick_tensorrt(PLANS)
    assert entry["file"] == "engines/fp16-sm89-trt10.7.0.plan"
    assert "matches this GPU" in reason


@pytest.mark.parametrize(
    ("cc", "trt", "reason"),
    [
        ("9.0", "10.7.0", "built for compute capability 8.9, this GPU is 9.0"),
        ("8.9", "10.8.0", "built with TensorRT 10.7.0, this machine has 10.8.0"),
        (None, "10.7.0", "no CUDA device"),
        ("8.9", None, "tensorrt is not installed"),
    ],
)
def test_no_usable_plan_says_why(machine, cc, trt, reason):
    machine(cc, trt)
    entry, reasons = loader._pick_tensorrt(PLANS)
    assert entry is None
    assert any(reason in r for r in reasons), reasons


def test_artifact_without_plans(machine):
    machine("8.9", "10.7.0")
    assert loader._pick_tensorrt(PLANS[2:]) == (None, ["the artifact has no TensorRT engine"])
