"""The CUDA device a process uses, and its memory, follow CUDA_VISIBLE_DEVICES (fakes of cuda-python and NVML:
an L4 at NVML index 0 and an H100 at NVML index 1)."""

import logging
import os

import pytest

from runtime.engine.cuda_device import format_uuid, visible_device, visible_indices
from runtime.engine.memory import FootprintMeter, available_bytes, gpu_free_total, gpu_process_bytes
from tests.fixtures.gpu_fakes import FakeCudart, FakeNvml, install, node

pytestmark = pytest.mark.usefixtures("forget_gpu")


@pytest.fixture
def gpus():
    return node()


def test_identity_and_memory_come_from_the_card_cuda_sees(monkeypatch, gpus):
    l4, h100 = gpus
    h100.processes[os.getpid()] = 3 << 30
    l4.processes[os.getpid()] = 1 << 30
    install(monkeypatch, cudart=FakeCudart(gpus), nvml=FakeNvml(gpus))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # as Ray sets it for a replica given the second GPU

    device, why = visible_device()
    assert why == ""
    assert (device.ordinal, device.name, device.compute_capability) == (0, "NVIDIA H100 80GB HBM3", "9.0")
    assert device.uuid == h100.uuid and device.pci_bus_id == "0000:41:00.0"
    assert device.total_memory == 80 << 30 and device.driver_version == "550.54.15"
    # NVML's index 0 is the L4: the figures must be the H100's.
    assert gpu_free_total() == (70 << 30, 80 << 30)
    assert gpu_process_bytes() == 3 << 30
    assert available_bytes(on_gpu=True) == 70 << 30
    assert FootprintMeter()._device == 3 << 30


def test_without_cuda_visible_devices_the_first_gpu(monkeypatch, gpus):
    install(monkeypatch, cudart=FakeCudart(gpus), nvml=FakeNvml(gpus))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_device()[0].name == "NVIDIA L4"
    assert visible_device(1)[0].name == "NVIDIA H100 80GB HBM3"
    device, why = visible_device(2)
    assert device is None and "sees 2" in why


def test_a_replica_without_gpus_sees_none(monkeypatch, gpus):
    install(monkeypatch, cudart=FakeCudart(gpus), nvml=FakeNvml(gpus))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    device, why = visible_device()
    assert device is None and "no CUDA device" in why
    assert gpu_free_total() is None and gpu_process_bytes() is None


@pytest.mark.parametrize(
    ("visible", "expected"),
    [("1", "NVIDIA H100 80GB HBM3"), ("GPU-a7e4", "NVIDIA H100 80GB HBM3"), ("0,1", "NVIDIA L4"), (None, "NVIDIA L4")],
)
def test_nvml_alone_applies_cuda_visible_devices(monkeypatch, gpus, visible, expected):
    install(monkeypatch, cudart=None, nvml=FakeNvml(gpus))  # an ONNX Runtime-only install: no cuda-python
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    device, _ = visible_device()
    assert device.name == expected
    wanted = next(g for g in gpus if g.name == expected)
    assert gpu_free_total() == (wanted.free, wanted.total)


def test_nvml_alone_warns_where_cuda_order_may_differ(monkeypatch, gpus, caplog):
    install(monkeypatch, cudart=None, nvml=FakeNvml(gpus))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    with caplog.at_level(logging.WARNING, logger="trtserve"):
        assert visible_device()[0].name == "NVIDIA H100 80GB HBM3"
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in caplog.text


def test_mig_needs_cuda_python(monkeypatch, gpus):
    install(monkeypatch, cudart=None, nvml=FakeNvml(gpus))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-4f1e0000-0000-0000-0000-000000000000")
    device, why = visible_device()
    assert device is None and "needs cuda-python" in why


def test_neither_cuda_python_nor_nvml(monkeypatch):
    install(monkeypatch, cudart=None, nvml=None)
    device, why = visible_device()
    assert device is None and "neither cuda-python nor" in why


def test_visible_indices_reads_as_cuda_does():
    uuids = ["GPU-aa11", "GPU-aa22", "GPU-bb33"]
    assert visible_indices(None, uuids) == [0, 1, 2]
    assert visible_indices("2,0", uuids) == [2, 0]
    assert visible_indices("0,7,1", uuids) == [0]  # read up to the first entry naming no device
    assert visible_indices("GPU-bb,GPU-aa", uuids) == [2]  # 'GPU-aa' is ambiguous
    assert visible_indices("1,1", uuids) == [1]
    assert "leaves none" in visible_indices("-1", uuids)


def test_format_uuid_as_nvidia_smi_prints_it():
    assert format_uuid(bytes.fromhex("a7e40000000000000000000000000002")) == "GPU-a7e40000-0000-0000-0000-000000000002"
