"""ONNX Runtime: the backend that runs everywhere (CPU here; CUDA execution provider where installed)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from runtime.engine.backends.base import Engine, EngineOptions, EngineSpec
from runtime.engine.cuda_device import probe
from runtime.engine.errors import ArtifactError, BackendUnavailable


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable(
            "onnxruntime is not installed (pip install 'trtserve[cpu]', or 'trtserve[gpu]' on NVIDIA GPUs)"
        ) from None
    return onnxruntime


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, spec: EngineSpec, options: EngineOptions | None = None) -> None:
        super().__init__(spec, options)
        ort = _ort()
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One replica owns the CPUs it was given; more threads than that only contend.
        session_options.intra_op_num_threads = self.options.intra_op_threads or _cpu_count()
        # By default idle worker threads spin waiting for work, taking the CPU a server's event loop needs
        # to parse the next requests (measured: -20% MiniLM throughput when serving on 2 cores). A process
        # that does nothing but run the engine is faster with spinning: spin=True.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options.spin else "0")
        session_options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        device = self.options.device
        if device in ("auto", "cuda") and self.cuda_usable():
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise BackendUnavailable("onnxruntime cannot use CUDA here (needs trtserve[gpu] and an NVIDIA GPU)")
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=session_options, providers=providers)
        except Exception as e:  # ORT raises its own exception types per failure, all fatal here
            raise ArtifactError(f"{self.path}: onnxruntime cannot load this model: {e}") from e
        self._providers = self._session.get_providers()
        self._output_names = [o.name for o in self._session.get_outputs()]

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            ort = _ort()
        except BackendUnavailable as e:
            return False, str(e)
        return True, f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"

    @classmethod
    def preferred_precisions(cls) -> tuple[str, ...]:
        return ("fp16", "fp32") if cls.cuda_usable() else ("fp32", "fp16")

    @classmethod
    def cuda_usable(cls) -> bool:
        """The CUDA execution provider is installed and a GPU is there for it."""
        return "CUDAExecutionProvider" in _ort().get_available_providers() and probe()[0] is not None

    @property
    def device(self) -> str:
        return "cuda:0" if self._providers[0] == "CUDAExecutionProvider" else "cpu"

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(feed))
        return dict(zip(self._output_names, results, strict=True))

    def _close_impl(self) -> None:
        del self._session
