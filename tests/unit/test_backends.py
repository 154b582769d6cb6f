"""The backend registry: backends by name, imported when asked for, all built alike; one registered from
outside the package is selected by name like the built-in ones."""

import numpy as np
import pytest

from runtime import load_engine
from runtime.engine import backends
from runtime.engine.backends import Engine, EngineSpec, auto_backends, engine_class, register_backend
from runtime.engine.errors import BackendUnavailable
from tests.fixtures.artifacts import sequence_model


def test_backends_are_found_by_name_and_imported_lazily():
    assert engine_class("onnxruntime").backend == "onnxruntime"
    with pytest.raises(BackendUnavailable, match="unknown backend 'nope'; known: onnxruntime, tensorrt, torch"):
        engine_class("nope")
    assert auto_backends() == ["tensorrt", "onnxruntime"]  # torch, the eager baseline, only when asked for


def test_tensorrt_says_what_is_missing():
    ok, why = engine_class("tensorrt").availability()
    if not ok:
        assert why == "tensorrt is not installed" or "CUDA" in why or "cuda-python" in why or "too old" in why


class EchoEngine(Engine):
    """Returns its input doubled, under every output name: needs no engine file of the artifact."""

    backend = "echo"

    @classmethod
    def availability(cls):
        return True, "always"

    @classmethod
    def choose(cls, version_dir, manifest, precision):
        return EngineSpec(version_dir, manifest.signature, "fp32"), "echo requested"

    def _infer_impl(self, feed):
        x = next(iter(feed.values()))
        return {"doubled": x * 2, "total": x.sum(axis=1)}


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))


def test_a_backend_registered_from_outside_is_loaded_by_name(registry, tmp_path):
    register_backend("echo", "tests.unit.test_backends:EchoEngine")
    assert engine_class("echo") is EchoEngine
    version = sequence_model(tmp_path / "seq" / "1")
    with load_engine(version, backend="echo") as engine:
        assert isinstance(engine, EchoEngine) and engine.precision == "fp32"
        out = engine.infer({"x": np.ones((2, 3), np.float32)})  # validated against the artifact's signature
        assert out["doubled"].tolist() == [[2.0] * 3] * 2
    with load_engine(version) as engine:  # not ranked for auto: auto never picks it
        assert engine.backend == "onnxruntime"


def test_a_ranked_backend_is_tried_by_auto_in_rank_order(registry, tmp_path):
    register_backend("echo", "tests.unit.test_backends:EchoEngine", auto_rank=-1)
    assert auto_backends() == ["echo", "tensorrt", "onnxruntime"]
    with load_engine(sequence_model(tmp_path / "seq" / "1")) as engine:
        assert engine.backend == "echo"


def test_a_target_that_is_not_an_engine_is_refused(registry):
    register_backend("bad", "tests.unit.test_backends:test_tensorrt_says_what_is_missing")
    with pytest.raises(BackendUnavailable, match="is not an Engine subclass"):
        engine_class("bad")
