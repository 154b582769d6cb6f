"""GPU memory accounting with the torch backend (the GPU path of memory-aware placement): needs torch
with a CUDA device, not TensorRT; skipped elsewhere with the reason."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.cuda]


def test_torch_cuda_footprint_is_measured(cnn_repository):
    import torch

    from runtime.serve import triton
    from runtime.serve.app_args import ModelOptions
    from runtime.serve.model import ServedModel

    model = ServedModel(cnn_repository / "cnn" / "1", ModelOptions(backend="torch", max_batch_size=64))
    model.warmup()
    footprint = model.footprint
    assert model.engine.device == "cuda:0"
    assert footprint.device_bytes and footprint.device_bytes > 0
    reserved = torch.cuda.memory_reserved()
    if footprint.device_method == "nvml-process":
        assert footprint.device_bytes >= reserved  # NVML also counts the CUDA context
    else:
        assert footprint.device_bytes == reserved
    assert triton.statistics(model)["memory"]["footprint"]["device_bytes"] == footprint.device_bytes
    model.close()


def test_replicas_pack_fractionally_on_one_gpu(cnn_repository):
    from runtime.serve.app_args import ModelSpec
    from runtime.serve.placement import actor_options, measure_replica

    need = measure_replica(cnn_repository, [ModelSpec(name="cnn", backend="torch", max_batch_size=64)])
    assert need.device_bytes and need.device_total_bytes
    options = actor_options(need, None, 0.2, None)
    assert 0 < options["num_gpus"] < 1
    # As many replicas as Ray would pack on this GPU must fit in its memory, with the headroom.
    replicas = int(1 / options["num_gpus"])
    assert replicas * need.device_bytes * 1.2 <= need.device_total_bytes


def test_batch_limit_steps_down_under_gpu_memory_pressure(cnn_repository):
    from runtime.capacity.replica_packing import pressure

    result = pressure(cnn_repository / "cnn" / "1", "torch", 64)
    assert result["under_pressure"] < result["configured"] == 64
    assert result["recovered"] == 64
    assert min(step["free_bytes"] for step in result["steps"]) < result["low_water_bytes"]
