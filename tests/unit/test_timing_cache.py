"""The TensorRT timing cache file: keyed by GPU model, merged under a lock, set aside when TensorRT cannot use
it; a cache problem never fails a build or loses its plan (fakes of TensorRT's builder config)."""

import logging
from pathlib import Path

import pytest

from convert import tensorrt_build
from convert.timing_cache import TimingCacheFile, cache_filename
from runtime.engine.cuda_device import CudaDevice
from runtime.engine.signature import DimRange, Signature, TensorSpec


class Cache:
    def __init__(self, entries=()):
        self.entries = set(entries)

    def combine(self, other, ignore_mismatch):
        self.entries |= other.entries
        return True

    def serialize(self):
        return b"TC1:" + b",".join(sorted(e.encode() for e in self.entries))


class Config:
    """IBuilderConfig's timing-cache half: b'TC1:...' parses, anything else is garbage (None or raise)."""

    def __init__(self, accept=True, raise_on_garbage=False, timed=("conv-b8",), keep=True):
        self.accept, self.raise_on_garbage, self.timed, self.keep = accept, raise_on_garbage, timed, keep
        self.attached = None

    def create_timing_cache(self, data):
        if data == b"":
            return Cache()
        if data.startswith(b"TC1:"):
            return Cache(e.decode() for e in data[4:].split(b",") if e)
        if self.raise_on_garbage:
            raise RuntimeError("bad timing cache")
        return None

    def set_timing_cache(self, cache, ignore_mismatch):
        assert ignore_mismatch is False
        if self.accept or not cache.entries:
            self.attached = cache
            return True
        return False

    def get_timing_cache(self):
        if not self.keep:
            return None
        self.attached.entries |= set(self.timed)  # what this build timed
        return self.attached


def entries(path: Path) -> set[str]:
    return set(path.read_bytes()[4:].decode().split(",")) - {""}


def test_the_cache_is_keyed_by_gpu_model():
    l4 = CudaDevice(0, "NVIDIA L4", "8.9", 1)
    rtx = CudaDevice(0, "NVIDIA GeForce RTX 4090", "8.9", 1)
    assert cache_filename(l4, "10.7.0") == "timing-nvidia-l4-sm89-trt10.7.0.cache"
    assert cache_filename(rtx, "10.7.0") == "timing-nvidia-geforce-rtx-4090-sm89-trt10.7.0.cache"


def test_a_build_reads_the_cache_and_merges_with_what_others_wrote(tmp_path):
    path = tmp_path / "timing.cache"
    path.write_bytes(b"TC1:gemm-b1")
    cache, config = TimingCacheFile(path), Config()
    assert cache.attach(config) and config.attached.entries == {"gemm-b1"}
    path.write_bytes(b"TC1:gemm-b1,softmax-b4")  # another build saved while this one ran
    cache.save(config)
    assert entries(path) == {"gemm-b1", "softmax-b4", "conv-b8"}
    assert list(tmp_path.iterdir()) == [path] or {p.name for p in tmp_path.iterdir()} == {
        "timing.cache",
        "timing.cache.lock",
    }


@pytest.mark.parametrize("raise_on_garbage", [False, True])
def test_a_corrupt_cache_is_set_aside(tmp_path, caplog, raise_on_garbage):
    path = tmp_path / "timing.cache"
    path.write_bytes(b"\x00garbage")
    config = Config(raise_on_garbage=raise_on_garbage)
    with caplog.at_level(logging.WARNING, logger="trtserve"):
        assert TimingCacheFile(path).attach(config)
    assert config.attached.entries == set()
    (aside,) = tmp_path.glob("timing.cache.bad-*")
    assert aside.read_bytes() == b"\x00garbage" and "cannot read it" in caplog.text
    TimingCacheFile(path).save(config)
    assert entries(path) == {"conv-b8"}


def test_a_rejected_cache_is_set_aside(tmp_path, caplog):
    path = tmp_path / "timing.cache"
    path.write_bytes(b"TC1:from-another-card")
    config = Config(accept=False)  # set_timing_cache says False: built on another device
    with caplog.at_level(logging.WARNING, logger="trtserve"):
        assert TimingCacheFile(path).attach(config)
    assert config.attached.entries == set() and "rejects it" in caplog.text
    assert len(list(tmp_path.glob("timing.cache.bad-*"))) == 1


def test_no_cache_after_the_build_leaves_the_file_alone(tmp_path, caplog):
    path = tmp_path / "timing.cache"
    path.write_bytes(b"TC1:gemm-b1")
    config = Config(keep=False)
    TimingCacheFile(path).attach(config)
    with caplog.at_level(logging.WARNING, logger="trtserve"):
        TimingCacheFile(path).save(config)
    assert entries(path) == {"gemm-b1"} and "no timing cache to save" in caplog.text


class FakeBuilderTrt:
    """Just enough of tensorrt for build_engine: the network parses, the build returns plan bytes."""

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class MemoryPoolType:
        WORKSPACE = 0

    class BuilderFlag:
        TF32 = 7

    class Logger:
        WARNING = 2

        def __init__(self, severity=2):
            pass

    def __init__(self, config: Config):
        self.config = config
        trt = self

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return object()

            def create_builder_config(self):
                config = trt.config
                config.set_memory_pool_limit = lambda pool, size: None
                config.clear_flag = lambda flag: None
                config.add_optimization_profile = lambda profile: None
                return config

            def create_optimization_profile(self):
                return type("Profile", (), {"set_shape": lambda self, *a: None})()

            def build_serialized_network(self, network, config):
                return b"PLAN"

        class OnnxParser:
            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser


def test_a_cache_that_cannot_be_saved_loses_no_plan(monkeypatch, tmp_path, forget_gpu):
    device = CudaDevice(0, "NVIDIA L4", "8.9", 1 << 34, "GPU-1", "0000:01:00.0", "550.54.15")
    monkeypatch.setattr(tensorrt_build, "tensorrt_target", lambda: (device, "10.7.0"))
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", FakeBuilderTrt(Config(keep=False)))
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")  # the cache's directory cannot be made
    sig = Signature((TensorSpec("x", "float32", ("batch", 4)),), (), {"batch": DimRange(1, 4, 8)})
    entry = tensorrt_build.build_engine(
        tmp_path / "m.onnx", sig, "fp16", tmp_path / "out", tensorrt_build.TensorRTOptions(timing_cache=blocked / "c")
    )
    assert (tmp_path / "out" / entry.file).read_bytes() == b"PLAN"
    assert (entry.gpu_name, entry.driver_version) == ("NVIDIA L4", "550.54.15")
