import pytest

from runtime.backends import Engine, engine_class, register_backend
from runtime.errors import BackendUnavailable


def test_backends_are_found_by_name_and_imported_lazily():
    assert engine_class("onnxruntime").backend == "onnxruntime"
    with pytest.raises(BackendUnavailable, match="unknown backend 'nope'; known: onnxruntime, tensorrt, torch"):
        engine_class("nope")


def test_a_registered_backend_is_loadable(monkeypatch):
    monkeypatch.setattr("runtime.backends._REGISTRY", dict(__import__("runtime.backends").backends._REGISTRY))
    register_backend("echo", "tests.unit.test_backends:EchoEngine")
    assert engine_class("echo") is EchoEngine


def test_tensorrt_says_what_is_missing():
    ok, why = engine_class("tensorrt").availability()
    if not ok:
        assert why == "tensorrt is not installed" or "CUDA" in why


class EchoEngine(Engine):
    backend = "echo"

    @classmethod
    def availability(cls):
        return True, "always"

    def _infer_impl(self, feed):
        return dict(feed)
