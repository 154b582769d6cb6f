"""ONNX Runtime on CUDA, against fakes of onnxruntime-gpu and the GPU: the providers a session really got,
TF32 off for fp32, cuDNN's heuristic algorithm search."""

import logging

import pytest

from runtime.engine.backends.base import EngineOptions, EngineSpec
from runtime.engine.backends.onnxruntime import OnnxRuntimeEngine, cuda_problem, cuda_provider_options
from runtime.engine.errors import EngineLoadError
from runtime.engine.signature import DimRange, Signature, TensorSpec
from tests.fixtures.gpu_fakes import FakeCudart, FakeNvml, FakeOrt, install, node

pytestmark = pytest.mark.usefixtures("forget_gpu")

SIG = Signature(
    inputs=(TensorSpec("x", "float32", ("batch", 4)),),
    outputs=(TensorSpec("out", "float32", ("batch", 4)),),
    dims={"batch": DimRange(1, 4, 8)},
)


def spec(tmp_path, precision="fp32"):
    return EngineSpec(tmp_path, SIG, precision, f"model.{precision}.onnx")


@pytest.fixture
def machine(monkeypatch):
    def set_machine(ort: FakeOrt, visible: str = "1"):
        gpus = node()
        install(monkeypatch, cudart=FakeCudart(gpus), nvml=FakeNvml(gpus), ort=ort)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        return ort

    return set_machine


def test_listed_is_not_enough_a_session_must_keep_cuda(machine, tmp_path):
    machine(FakeOrt(cuda_loads=False))  # get_available_providers() lists CUDA; sessions drop it
    assert "does not load here" in cuda_problem()
    assert not OnnxRuntimeEngine.cuda_usable()
    assert OnnxRuntimeEngine.preferred_precisions() == ("fp32", "fp16")  # fp16 on a CPU is only emulated
    engine = OnnxRuntimeEngine(spec(tmp_path))
    assert engine.device == "cpu"
    with pytest.raises(Exception, match="cannot use CUDA here"):
        OnnxRuntimeEngine(spec(tmp_path), EngineOptions(device="cuda"))


def test_fp32_on_cuda_runs_without_tf32(machine, tmp_path):
    ort = machine(FakeOrt())
    assert OnnxRuntimeEngine.cuda_usable() and OnnxRuntimeEngine.preferred_precisions() == ("fp16", "fp32")
    engine = OnnxRuntimeEngine(spec(tmp_path, "fp32"))
    assert engine.device == "cuda:0"
    (cuda, options), cpu = ort.sessions[-1].requested
    assert cuda == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert options == {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}
    OnnxRuntimeEngine(spec(tmp_path, "fp16"))
    assert "use_tf32" not in ort.sessions[-1].requested[0][1]


def test_provider_options_name_the_device_cuda_numbers():
    assert cuda_provider_options("fp16", 1) == {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC"}


def test_a_session_that_lost_cuda_is_caught(machine, tmp_path, caplog):
    machine(FakeOrt(cuda_loads=True, cuda_loads_for_models=False))  # the probe kept CUDA, the model did not
    with pytest.raises(EngineLoadError, match="CUDA provider did not load"):
        OnnxRuntimeEngine(spec(tmp_path), EngineOptions(device="cuda"))
    with caplog.at_level(logging.WARNING, logger="trtserve"):
        engine = OnnxRuntimeEngine(spec(tmp_path))
    assert engine.device == "cpu" and "running fp32 on the CPU" in caplog.text


def test_no_visible_gpu_no_cuda(machine, tmp_path):
    machine(FakeOrt(), visible="")
    assert "no CUDA device" in cuda_problem()
