"""Memory measurement helpers and the batch-limit step-down."""

import pytest

from runtime.engine.memory import FootprintMeter, host_available_bytes, host_rss_bytes
from runtime.serve.memory_pressure import BatchLimiter

MiB = 2**20


def test_batch_limit_halves_under_pressure_and_recovers_with_hysteresis():
    limiter = BatchLimiter(64, low_water_bytes=100 * MiB, high_water_bytes=300 * MiB, interval_s=0)
    assert limiter.update(50 * MiB, now=1) == (64, 32)
    assert limiter.update(50 * MiB, now=2) == (32, 16)
    assert limiter.update(200 * MiB, now=3) is None  # between the marks: hold
    assert limiter.limit == 16
    assert limiter.update(400 * MiB, now=4) == (16, 32)
    assert limiter.update(400 * MiB, now=5) == (32, 64)
    assert limiter.update(400 * MiB, now=6) is None  # never above the configured limit


def test_batch_limit_never_below_one_and_checks_at_most_every_interval():
    limiter = BatchLimiter(2, low_water_bytes=100 * MiB, interval_s=1.0)
    assert limiter.update(0, now=10.0) == (2, 1)
    assert limiter.update(0, now=10.5) is None  # too soon
    assert limiter.update(0, now=11.5) is None and limiter.limit == 1
    assert limiter.update(None, now=20.0) is None  # nothing measured: no change
    with pytest.raises(ValueError):
        BatchLimiter(0, low_water_bytes=1)


def test_host_figures_are_measured_here():
    assert host_rss_bytes() > 10 * MiB
    assert host_available_bytes() > 0


def test_cgroup_limit_caps_available_memory(tmp_path):
    (tmp_path / "memory.max").write_text(str(512 * MiB))
    (tmp_path / "memory.current").write_text(str(500 * MiB))
    assert host_available_bytes(tmp_path) == 12 * MiB
    (tmp_path / "memory.max").write_text("max")
    assert host_available_bytes(tmp_path) > 12 * MiB


class CpuEngine:
    device = "cpu"
    backend = "onnxruntime"

    def memory(self):
        return {"device_bytes": None}


def test_footprint_is_what_loading_added():
    import mmap

    meter = FootprintMeter()
    ballast = mmap.mmap(-1, 64 * MiB)  # fresh pages from the kernel, not memory the heap already holds
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # touched: now resident
    footprint = meter.finish(CpuEngine(), max_batch_size=8)
    assert footprint.host_bytes >= 60 * MiB
    assert footprint.device_bytes is None and footprint.device_method == "none"
    assert footprint.to_dict()["max_batch_size"] == 8
    ballast.close()


def test_a_served_model_steps_its_batch_limit_down_under_pressure(tmp_path, monkeypatch):
    from runtime.serve import triton
    from runtime.serve.app_args import ModelOptions
    from runtime.serve.model import ServedModel
    from tests.fixtures.artifacts import sequence_model

    model = ServedModel(sequence_model(tmp_path / "seq" / "1"), ModelOptions(max_batch_size=8, memory_low_water_mb=100))
    model.warmup()
    assert model.footprint.host_bytes >= 0 and model.footprint.max_batch_size == 8
    available = {"bytes": 50 * MiB}
    monkeypatch.setattr(model.pressure, "available", lambda: available["bytes"])
    model.pressure.check(now=1000.0)
    assert model.batcher.max_rows == 4 and triton.statistics(model)["max_batch_size"] == {"configured": 8, "now": 4}
    available["bytes"] = 10 * 2**30
    model.pressure.check(now=1001.0)
    assert model.batcher.max_rows == 8
    off = ServedModel(sequence_model(tmp_path / "seq2" / "1"), ModelOptions(memory_low_water_mb=0))
    off.warmup()
    assert off.pressure is None
    model.close()
    off.close()


def test_gpu_figures_come_from_nvml_per_process(monkeypatch, forget_gpu):
    import os

    from runtime.engine.memory import gpu_free_total, gpu_process_bytes
    from tests.fixtures.gpu_fakes import FakeCudart, FakeNvml, install, node

    gpus = node()[1:]  # one H100: 70 GiB of 80 free
    gpu = gpus[0]
    gpu.processes.update({1: 5, os.getpid(): 1500 * MiB})
    install(monkeypatch, cudart=FakeCudart(gpus), nvml=FakeNvml(gpus))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_process_bytes() == 1500 * MiB
    assert gpu_free_total() == (70 * 2**30, 80 * 2**30)

    class CudaEngine:
        device = "cuda:0"
        backend = "tensorrt"

    meter = FootprintMeter()
    gpu.processes[os.getpid()] = 2600 * MiB  # the engine, its context and activations
    footprint = meter.finish(CudaEngine(), max_batch_size=64)
    assert footprint.device_bytes == 1100 * MiB and footprint.device_method == "nvml-process"


@pytest.mark.usefixtures("forget_gpu")
def test_gpu_footprint_falls_back_to_the_backend_figure_without_nvml(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails: no NVML

    class TorchCuda:
        device = "cuda:0"
        backend = "torch"

        def memory(self):
            return {"device_bytes": 700 * MiB}

    footprint = FootprintMeter().finish(TorchCuda(), max_batch_size=8)
    assert footprint.device_bytes == 700 * MiB and footprint.device_method == "torch-reported"
