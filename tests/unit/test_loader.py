"""Which engine of a version each backend would load here, and what load_engine does with that, with the
GPU and TensorRT version faked where it matters."""

import logging

import pytest

from runtime import load_engine
from runtime.engine.backends import tensorrt
from runtime.engine.backends.tensorrt import TensorRTEngine
from runtime.engine.cuda_device import CudaDevice
from runtime.engine.errors import BackendUnavailable
from runtime.engine.manifest import Manifest
from tests.fixtures.artifacts import ONNX_ENGINE, manifest_fields, sequence_model


def plan(precision: str, cc: str = "8.9", trt: str = "10.7.0") -> dict:
    return {
        "file": f"engines/{precision}-sm{cc.replace('.', '')}-trt{trt}.plan",
        "backend": "tensorrt",
        "precision": precision,
        "compute_capability": cc,
        "tensorrt_version": trt,
        "profiles": [],
    }


ONNX = ONNX_ENGINE


def manifest(engines: list[dict]) -> Manifest:
    fields = manifest_fields("toy", 1, [], [], {"batch": {"min": 1, "opt": 1, "max": 4}})
    return Manifest.model_validate({**fields, "engines": engines, "files": {}})


@pytest.fixture
def machine(monkeypatch):
    def set_machine(cc, trt):
        device = CudaDevice(0, "Fake GPU", cc, 1 << 34) if cc else None
        monkeypatch.setattr(tensorrt, "visible_device", lambda: (device, "" if device else "no CUDA device"))
        monkeypatch.setattr(tensorrt, "tensorrt_version", lambda: trt)

    return set_machine


def test_matching_gpu_picks_the_fp16_plan(machine, tmp_path):
    machine("8.9", "10.7.0")
    spec, reason = TensorRTEngine.choose(tmp_path, manifest([plan("fp32"), plan("fp16"), ONNX]), None)
    assert spec.file == "engines/fp16-sm89-trt10.7.0.plan" and spec.precision == "fp16"
    assert "matches this GPU's compute capability (8.9) and TensorRT 10.7.0" in reason
    assert "an unrecorded GPU" in spec.warning  # the plans record no GPU model
    spec, _ = TensorRTEngine.choose(tmp_path, manifest([plan("fp32"), plan("fp16")]), "fp32")
    assert spec.precision == "fp32"


@pytest.mark.parametrize(
    ("cc", "trt", "reason"),
    [
        ("9.0", "10.7.0", "built for compute capability 8.9, this GPU is 9.0"),
        ("8.9", "10.8.0", "built with TensorRT 10.7.0, this machine has 10.8.0"),
        (None, "10.7.0", "no CUDA device"),
        ("8.9", None, "tensorrt is not installed"),
    ],
)
def test_no_usable_plan_says_why(machine, tmp_path, cc, trt, reason):
    machine(cc, trt)
    spec, why = TensorRTEngine.choose(tmp_path, manifest([plan("fp32"), plan("fp16"), ONNX]), None)
    assert spec is None and reason in why


def test_artifact_without_plans(machine, tmp_path):
    machine("8.9", "10.7.0")
    assert TensorRTEngine.choose(tmp_path, manifest([ONNX]), None) == (None, "the artifact has no tensorrt engine")


def test_auto_falls_back_to_onnxruntime_and_says_why(tmp_path, caplog):
    version = sequence_model(tmp_path / "seq" / "1")
    with caplog.at_level(logging.INFO, logger="trtserve"), load_engine(version) as engine:
        assert engine.backend == "onnxruntime" and engine.precision == "fp32"
    assert "using onnxruntime fp32 on cpu" in caplog.text
    assert "tensorrt: the artifact has no tensorrt engine" in caplog.text


def test_no_engine_that_can_run_is_one_clear_error(tmp_path):
    version = sequence_model(tmp_path / "seq" / "1")
    with pytest.raises(BackendUnavailable, match=r"no engine can run here \(tensorrt: the artifact has no tensorrt"):
        load_engine(version, backend="tensorrt")
    with pytest.raises(
        BackendUnavailable, match="onnxruntime: the artifact has no onnxruntime engine of precision fp16"
    ):
        load_engine(version, backend="onnxruntime", precision="fp16")
    with pytest.raises(BackendUnavailable, match="unknown backend 'tpu'"):
        load_engine(version, backend="tpu")
