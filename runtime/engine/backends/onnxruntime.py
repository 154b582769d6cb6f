"""ONNX Runtime: the backend that runs everywhere (CPU here; the CUDA execution provider where it works).

On CUDA, fp32 sessions run with TF32 off (`use_tf32=0`; ONNX Runtime turns it on by default), as the
TensorRT fp32 build does: both fp32 paths compute in fp32 and parity means the same on each. Convolution
algorithms come from cuDNN's heuristics (`cudnn_conv_algo_search=HEURISTIC`) rather than ONNX Runtime's
default exhaustive search, which benchmarks every new input shape on its first call: a server's batches
come in every size up to the limit, and warm-up runs only a few of them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping

import numpy as np

from runtime.engine.backends.base import Engine, EngineOptions, EngineSpec
from runtime.engine.cuda_device import visible_device
from runtime.engine.errors import ArtifactError, BackendUnavailable, EngineLoadError, single_line

log = logging.getLogger("trtserve.runtime")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable(
            "onnxruntime is not installed (pip install 'trtserve[cpu]', or 'trtserve[gpu]' on NVIDIA GPUs)"
        ) from None
    return onnxruntime


def cpu_budget() -> int:
    """The CPUs this process may keep busy: those it may run on, and no more than its scheduler gave it.
    Ray sets OMP_NUM_THREADS in a worker to the CPUs the actor was assigned (at least 1): a replica given
    one CPU on a 16-core node runs its engine on one thread, not sixteen that contend with the event loop
    and the other replicas."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    assigned = os.environ.get("OMP_NUM_THREADS", "")
    if assigned.isdecimal() and int(assigned) >= 1:
        cpus = min(cpus, int(assigned))
    return cpus


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, spec: EngineSpec, options: EngineOptions | None = None) -> None:
        super().__init__(spec, options)
        ort = _ort()
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One replica owns the CPUs it was given; more threads than that only contend. Operators run one
        # after another (ORT's default sequential mode: a server's parallelism is across requests, batched).
        session_options.intra_op_num_threads = self.options.intra_op_threads or cpu_budget()
        session_options.inter_op_num_threads = 1
        # By default idle worker threads spin waiting for work, taking the CPU a server's event loop needs
        # to parse the next requests (measured: -20% MiniLM throughput when serving on 2 cores). A process
        # that does nothing but run the engine is faster with spinning: spin=True.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options.spin else "0")
        session_options.log_severity_level = 3
        providers: list = [CPU]
        device = self.options.device
        if device in ("auto", "cuda") and self.cuda_usable():
            ordinal = visible_device()[0].ordinal
            providers.insert(0, (CUDA, cuda_provider_options(self.precision, ordinal)))
        elif device == "cuda":
            raise BackendUnavailable(f"onnxruntime cannot use CUDA here ({cuda_problem()})")
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=session_options, providers=providers)
        except Exception as e:  # ORT raises its own exception types per failure, all fatal here
            raise ArtifactError(f"{self.path}: onnxruntime cannot load this model: {single_line(str(e))}") from e
        # ORT falls back to the CPU, silently, when the CUDA provider does not load (a missing cuDNN, say).
        self._providers = self._session.get_providers()
        if len(providers) > 1 and CUDA not in self._providers:
            if device == "cuda":
                raise EngineLoadError(f"{self.path}: onnxruntime's CUDA provider did not load; the session is on CPU")
            log.warning(
                "%s: onnxruntime's CUDA provider did not load; running %s on the CPU", self.path, self.precision
            )
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
        """A CUDA session really runs here: not only listed (`get_available_providers` names the providers
        compiled in, whether or not CUDA and cuDNN load), but a session created with it keeps it."""
        return cuda_problem() is None

    @property
    def device(self) -> str:
        if self._providers[0] != CUDA:
            return "cpu"
        return f"cuda:{visible_device()[0].ordinal}"

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(feed))
        return dict(zip(self._output_names, results, strict=True))

    def _close_impl(self) -> None:
        del self._session


def cuda_provider_options(precision: str, ordinal: int) -> dict[str, str]:
    """The CUDA execution provider's options for a session of `precision` on CUDA device `ordinal`."""
    options = {"device_id": str(ordinal), "cudnn_conv_algo_search": "HEURISTIC"}
    if precision == "fp32":
        options["use_tf32"] = "0"
    return options


def cuda_problem() -> str | None:
    """Why a CUDA session cannot run here, or None when it can (checked once per process)."""
    if CUDA not in _ort().get_available_providers():
        return "this onnxruntime has no CUDA execution provider (trtserve[gpu] installs onnxruntime-gpu)"
    device, why = visible_device()
    if device is None:
        return why
    return _cuda_session_problem(device.ordinal)


@functools.cache
def _cuda_session_problem(ordinal: int) -> str | None:
    """Create a one-node session on CUDA and see whether it kept the provider."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "cuda_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ort = _ort()
    # CUDA and cuDNN installed from pip (onnxruntime-gpu[cuda,cudnn]) are not on the loader's path until
    # preloaded (ONNX Runtime 1.21+); without them the session would quietly keep only the CPU provider.
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as e:
            log.warning("onnxruntime.preload_dlls() failed: %s", e)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            model.SerializeToString(),
            sess_options=options,
            providers=[(CUDA, {"device_id": str(ordinal)}), CPU],
        )
    except Exception as e:  # whatever ORT raises, CUDA is not usable
        return f"onnxruntime cannot create a CUDA session: {e}"
    if CUDA not in session.get_providers():
        return "onnxruntime's CUDA provider does not load here (CUDA or cuDNN libraries missing?)"
    return None
