"""Native TensorRT engines (TensorRT 10/11 API: tensor names, set_tensor_address, execute_async_v3).

Kept thin on purpose: everything that can be decided without a GPU lives in runtime.engine.tensorrt_plan and
is unit-tested there. This module needs tensorrt, cuda-python and an NVIDIA GPU.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping

import numpy as np

from runtime.engine.backends.base import Engine, EngineOptions, EngineSpec
from runtime.engine.cuda_device import probe, tensorrt_version
from runtime.engine.errors import ArtifactError, BackendUnavailable, TrtserveError
from runtime.engine.manifest import EngineEntry
from runtime.engine.tensorrt_plan import plan_compatibility


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendUnavailable("cuda-python is not installed (pip install 'trtserve[gpu]')") from None
    return cudart


def _call(result):
    """cuda-python returns (error, *values); raise on error, return the value(s)."""
    err, *values = result
    if int(err) != 0:
        raise TrtserveError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)


class _Buffer:
    """A device allocation with a pinned host twin, grown when a larger shape arrives."""

    def __init__(self, cudart) -> None:
        self._cudart = cudart
        self.capacity = 0
        self.device = 0
        self.host = 0

    def ensure(self, nbytes: int) -> None:
        if nbytes <= self.capacity:
            return
        self.free()
        self.device = _call(self._cudart.cudaMalloc(nbytes))
        self.host = _call(self._cudart.cudaMallocHost(nbytes))
        self.capacity = nbytes

    def host_view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape)) if shape else 1
        raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(self.host)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.capacity:
            self._cudart.cudaFree(self.device)
            self._cudart.cudaFreeHost(self.host)
            self.capacity = 0


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, spec: EngineSpec, options: EngineOptions | None = None) -> None:
        super().__init__(spec, options)
        import tensorrt as trt

        self._cudart = cudart = _cudart()
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"{self.path}: TensorRT could not deserialize this engine (see the log above)")
        self._context = self._engine.create_execution_context()
        self._stream = _call(cudart.cudaStreamCreate())
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._buffers = {n: _Buffer(cudart) for n in names}

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        version = tensorrt_version()
        if version is None:
            return False, "tensorrt is not installed"
        device, why = probe()
        if device is None:
            return False, why
        return True, f"TensorRT {version} on {device.name} (sm {device.compute_capability})"

    @classmethod
    def runnable(cls, entry: EngineEntry) -> tuple[bool, str]:
        version = tensorrt_version()
        device, why = probe()
        if device is None and version is not None:
            return False, why
        return plan_compatibility(entry, device.compute_capability if device else None, version)

    @classmethod
    def preferred_precisions(cls) -> tuple[str, ...]:
        return ("fp16", "fp32")

    @property
    def device(self) -> str:
        return "cuda:0"

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self._inputs:
            array = np.ascontiguousarray(feed[name], dtype=self._dtypes[name])
            if not self._context.set_input_shape(name, array.shape):
                raise TrtserveError(f"input {name!r}: shape {list(array.shape)} is outside the engine's profile")
            buffer = self._buffers[name]
            buffer.ensure(max(array.nbytes, 1))
            buffer.host_view(array.dtype, array.shape)[...] = array
            _call(cudart.cudaMemcpyAsync(buffer.device, buffer.host, array.nbytes, h2d, self._stream))
            self._context.set_tensor_address(name, buffer.device)
        shapes = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise TrtserveError(f"output {name!r} has a data-dependent shape, which trtserve does not support")
            shapes[name] = shape
            buffer = self._buffers[name]
            buffer.ensure(max(int(np.prod(shape)) * self._dtypes[name].itemsize, 1))
            self._context.set_tensor_address(name, buffer.device)
        if not self._context.execute_async_v3(self._stream):
            raise TrtserveError(f"{self.path}: TensorRT execution failed")
        for name in self._outputs:
            nbytes = int(np.prod(shapes[name])) * self._dtypes[name].itemsize
            _call(
                cudart.cudaMemcpyAsync(self._buffers[name].host, self._buffers[name].device, nbytes, d2h, self._stream)
            )
        _call(cudart.cudaStreamSynchronize(self._stream))
        return {n: self._buffers[n].host_view(self._dtypes[n], shapes[n]).copy() for n in self._outputs}

    def memory(self) -> dict[str, int | None]:
        report = super().memory()
        report["device_bytes"] = int(self._engine.device_memory_size_v2) + sum(
            b.capacity for b in self._buffers.values()
        )
        return report

    def _close_impl(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        self._cudart.cudaStreamDestroy(self._stream)
        del self._context, self._engine, self._runtime
