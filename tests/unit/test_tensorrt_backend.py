"""The TensorRT backend's runtime logic against fakes of tensorrt, cuda-python and NVML (tests/fixtures/gpu_fakes):
fallback when a plan does not load, plan matching by GPU model and driver, buffers, one logger per process."""

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime import load_engine
from runtime.engine.backends.tensorrt import TensorRTEngine
from runtime.engine.errors import BackendUnavailable, EngineLoadError, TrtserveError
from runtime.engine.manifest import write_manifest
from runtime.serve.triton import engine_choice
from tests.fixtures.artifacts import IR_VERSION, ONNX_ENGINE, manifest_fields
from tests.fixtures.gpu_fakes import PLAN, FakeCudart, FakeNvml, FakeTensorRT, install, node

pytestmark = pytest.mark.usefixtures("forget_gpu")

L4_DRIVER = "550.54.15"


def plan_entry(file: str, precision: str = "fp16", gpu: str | None = "NVIDIA L4", driver: str | None = L4_DRIVER):
    return {
        "file": file,
        "backend": "tensorrt",
        "precision": precision,
        "compute_capability": "8.9",
        "tensorrt_version": "10.7.0",
        "profiles": [],
        "gpu_name": gpu,
        "driver_version": driver,
    }


def artifact(root, plans: dict[str, bytes], entries: list[dict] | None = None):
    """out = 2 * x + 1 (x float32 [batch, 4]) as ONNX and as the fake plans `plans` (file -> bytes)."""
    root.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["twice"]), helper.make_node("Add", ["twice", "one"], ["out"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
    )
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION),
        str(root / "model.onnx"),
    )
    for file, data in plans.items():
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        (root / file).write_bytes(data)
    fields = manifest_fields(
        "double",
        1,
        [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        [{"name": "out", "dtype": "float32", "shape": ["batch", 4]}],
        {"batch": {"min": 1, "opt": 4, "max": 8}},
    )
    fields["engines"] = [*(entries or [plan_entry(f) for f in plans]), ONNX_ENGINE]
    write_manifest(root, fields)
    return root


@pytest.fixture
def gpu(monkeypatch):
    """This machine: one L4 (driver 550.54.15), TensorRT 10.7.0, cuda-python; ONNX Runtime the real one (CPU)."""
    gpus = node()[:1]
    cudart = FakeCudart(gpus)
    trt = FakeTensorRT(cudart)
    install(monkeypatch, cudart=cudart, nvml=FakeNvml(gpus, L4_DRIVER), trt=trt)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return trt


def x(batch: int) -> np.ndarray:
    return np.arange(batch * 4, dtype=np.float32).reshape(batch, 4)


def test_a_matching_plan_runs_and_shapes_grow_and_shrink(gpu, tmp_path):
    version = artifact(tmp_path / "double" / "1", {"engines/fp16-sm89-trt10.7.0.plan": PLAN})
    with load_engine(version) as engine:
        assert (engine.backend, engine.device) == ("tensorrt", "cuda:0")
        assert engine.spec.warning is None and "built on this GPU model" in engine.spec.reason
        for batch in (1, 4, 8, 2, 1):  # growing reallocates the buffers, shrinking reuses them
            out = engine.infer({"x": x(batch)})["out"]
            np.testing.assert_array_equal(out, 2 * x(batch) + 1)  # no stale rows from a larger batch
        gpu.profile_max_batch = 4  # a plan whose profile is narrower than the signature's dims
        with pytest.raises(TrtserveError, match="outside the engine's profile"):
            engine.infer({"x": x(6)})
        np.testing.assert_array_equal(engine.infer({"x": x(3)})["out"], 2 * x(3) + 1)
        assert engine.memory()["device_bytes"] >= 1 << 20


@pytest.mark.parametrize(
    ("data", "said"), [(b"not a plan", "could not deserialize"), (b"no context", "execution context")]
)
def test_a_plan_that_does_not_load_falls_back_to_onnxruntime(gpu, tmp_path, caplog, data, said):
    version = artifact(tmp_path / "double" / "1", {"engines/fp16-sm89-trt10.7.0.plan": data})
    with caplog.at_level(logging.INFO, logger="trtserve"), load_engine(version) as engine:
        assert engine.backend == "onnxruntime"
        np.testing.assert_allclose(engine.infer({"x": x(3)})["out"], 2 * x(3) + 1)
        (passed_over,) = engine.spec.passed_over
        assert (
            passed_over.startswith("tensorrt: engines/fp16-sm89-trt10.7.0.plan failed to load") and said in passed_over
        )
    assert said in caplog.text and "trying the next backend" in caplog.text


def test_asked_for_by_name_a_plan_that_does_not_load_is_an_error(gpu, tmp_path):
    version = artifact(tmp_path / "double" / "1", {"engines/fp16-sm89-trt10.7.0.plan": b"no context"})
    with pytest.raises(EngineLoadError, match="execution context"):
        load_engine(version, backend="tensorrt")


def test_exact_plan_preferred_another_gpu_model_accepted_with_a_warning(gpu, tmp_path, caplog):
    exact, other = "engines/exact.plan", "engines/other.plan"
    entries = [plan_entry(other, "fp16", gpu="NVIDIA GeForce RTX 4090", driver="560.28.03"), plan_entry(exact, "fp32")]
    version = artifact(tmp_path / "a" / "1", {exact: PLAN, other: PLAN}, entries)
    with load_engine(version) as engine:
        assert engine.spec.file == exact and engine.spec.warning is None  # exact beats the preferred precision

    version = artifact(tmp_path / "b" / "1", {other: PLAN}, entries[:1])
    with caplog.at_level(logging.WARNING, logger="trtserve"), load_engine(version) as engine:
        assert engine.backend == "tensorrt" and engine.spec.file == other
        assert "built on NVIDIA GeForce RTX 4090, driver 560.28.03, this is NVIDIA L4" in engine.spec.warning
        choice = engine_choice(type("Model", (), {"engine": engine})())
        assert choice["warning"] == engine.spec.warning and choice["backend"] == "tensorrt"
    assert "NVIDIA GeForce RTX 4090" in caplog.text


def test_a_plan_from_before_plans_recorded_their_gpu_is_accepted_with_a_warning(gpu, tmp_path):
    file = "engines/old.plan"
    version = artifact(tmp_path / "double" / "1", {file: PLAN}, [plan_entry(file, gpu=None, driver=None)])
    with load_engine(version) as engine:
        assert engine.backend == "tensorrt" and "an unrecorded GPU" in engine.spec.warning


def test_one_logger_for_every_engine_of_the_process(gpu, tmp_path):
    version = artifact(tmp_path / "double" / "1", {"engines/fp16-sm89-trt10.7.0.plan": PLAN})
    first = load_engine(version, backend="tensorrt")
    second = load_engine(version, backend="tensorrt")
    first.close()
    np.testing.assert_array_equal(second.infer({"x": x(2)})["out"], 2 * x(2) + 1)  # the first closed
    second.close()
    assert len(gpu.loggers) == 1 and len(gpu.runtimes) == 2
    assert {id(r.logger) for r in gpu.runtimes} == {id(gpu.loggers[0])}


def test_failed_pinned_allocation_frees_the_device_buffer(gpu, tmp_path):
    version = artifact(tmp_path / "double" / "1", {"engines/fp16-sm89-trt10.7.0.plan": PLAN})
    with load_engine(version, backend="tensorrt") as engine:
        gpu.cudart.fail_malloc_host = True
        held = set(gpu.cudart.memory)
        with pytest.raises(TrtserveError, match="cudaMallocHost"):
            engine.infer({"x": x(2)})
        assert set(gpu.cudart.memory) == held  # the device half was given back
        assert engine._buffers["x"].capacity == 0
        gpu.cudart.fail_malloc_host = False
        np.testing.assert_array_equal(engine.infer({"x": x(2)})["out"], 2 * x(2) + 1)


def test_refused_tensor_address_is_an_error(gpu, tmp_path):
    version = artifact(tmp_path / "double" / "1", {"engines/fp16-sm89-trt10.7.0.plan": PLAN})
    with load_engine(version, backend="tensorrt") as engine:
        gpu.refuse_address = True
        with pytest.raises(TrtserveError, match="refused the address of tensor 'x'"):
            engine.infer({"x": x(2)})


def test_a_failed_call_waits_for_its_queued_copies(gpu, tmp_path):
    version = artifact(tmp_path / "double" / "1", {"engines/fp16-sm89-trt10.7.0.plan": PLAN})
    with load_engine(version, backend="tensorrt") as engine:
        gpu.fail_execute = True
        gpu.cudart.calls.clear()
        with pytest.raises(TrtserveError, match="execution failed"):
            engine.infer({"x": x(2)})
        assert gpu.cudart.calls == ["copy1", "sync"]  # the input copy was queued, then waited for


@pytest.mark.parametrize(("version", "ok"), [("10.0.1.6", False), ("10.1.0", True), ("11.0.0", True)])
def test_tensorrt_10_0_is_refused(gpu, version, ok):
    gpu.__version__ = version
    available, why = TensorRTEngine.availability()
    assert available is ok
    if not ok:
        assert "too old: trtserve needs 10.1 or newer" in why


def test_without_cuda_python_tensorrt_is_unavailable(monkeypatch, tmp_path):
    gpus = node()[:1]
    install(monkeypatch, cudart=None, nvml=FakeNvml(gpus), trt=FakeTensorRT(FakeCudart(gpus)))
    ok, why = TensorRTEngine.availability()
    assert not ok and "cuda-python is not installed" in why
    with pytest.raises(BackendUnavailable):
        TensorRTEngine.__new__(TensorRTEngine).__init__(None)


def test_replay_repeats_the_last_call_without_python_around_it(gpu, tmp_path):
    version = artifact(tmp_path / "double" / "1", {"engines/fp16-sm89-trt10.7.0.plan": PLAN})
    with load_engine(version, backend="tensorrt") as engine:
        engine.infer({"x": x(3)})
        gpu.cudart.calls.clear()
        assert engine.replay(2) > 0
        assert gpu.cudart.calls == ["copy1", "copy2", "sync"] * 2
        assert engine.tensor_dtypes == {"x": np.dtype(np.float32), "out": np.dtype(np.float32)}
