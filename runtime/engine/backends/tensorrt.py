"""Native TensorRT engines (TensorRT 10.1+ and 11 API: tensor names, set_tensor_address, execute_async_v3).

Kept thin on purpose: everything that can be decided without a GPU lives in runtime.engine.tensorrt_plan and
is unit-tested there (and this module against fakes of tensorrt and cuda-python). Needs tensorrt,
cuda-python and an NVIDIA GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import time
from collections.abc import Mapping

import numpy as np

from runtime.engine.backends.base import Engine, EngineOptions, EngineSpec
from runtime.engine.cuda_device import check, cudart, cudart_or_none, tensorrt_version, visible_device
from runtime.engine.errors import EngineLoadError, TrtserveError
from runtime.engine.manifest import EngineEntry
from runtime.engine.tensorrt_plan import plan_compatibility, tensorrt_supported


@functools.cache
def trt_logger():
    """The process's one TensorRT logger: TensorRT keeps the first logger it is given for the whole process,
    so every builder and runtime (this backend's, the convert stage's) shares this one."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


class _Buffer:
    """A device allocation with a pinned host twin, grown when a larger shape arrives."""

    def __init__(self, runtime) -> None:
        self._cudart = runtime
        self.capacity = 0
        self.device = 0
        self.host = 0

    def ensure(self, nbytes: int) -> None:
        if nbytes <= self.capacity:
            return
        self.free()
        device = check(self._cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})")
        try:
            host = check(self._cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})")
        except TrtserveError:
            self._cudart.cudaFree(device)
            raise
        self.device, self.host, self.capacity = device, host, nbytes

    def host_view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape)) if shape else 1
        raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(self.host)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.capacity:
            self._cudart.cudaFree(self.device)
            self._cudart.cudaFreeHost(self.host)
            self.device = self.host = self.capacity = 0


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, spec: EngineSpec, options: EngineOptions | None = None) -> None:
        super().__init__(spec, options)
        import tensorrt as trt

        self._cudart = runtime = cudart()
        self._device = visible_device()[0]
        self._buffers: dict[str, _Buffer] = {}
        self._stream = None
        self._runtime = trt.Runtime(trt_logger())
        # Either can fail on a machine whose compute capability and TensorRT version match (another GPU
        # model or driver, no device memory left): EngineLoadError, so backend="auto" moves on.
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise EngineLoadError(f"{self.path}: TensorRT could not deserialize this plan here (see its log above)")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            del self._engine
            raise EngineLoadError(f"{self.path}: TensorRT could not create an execution context (out of GPU memory?)")
        self._stream = check(runtime.cudaStreamCreate(), "cudaStreamCreate")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._buffers = {n: _Buffer(runtime) for n in names}

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        version = tensorrt_version()
        if version is None:
            return False, "tensorrt is not installed"
        ok, why = tensorrt_supported(version)
        if not ok:
            return False, why
        if cudart_or_none() is None:
            return False, "cuda-python is not installed (pip install 'trtserve[gpu]')"
        device, why = visible_device()
        if device is None:
            return False, why
        return True, f"TensorRT {version} on {device.name} (sm {device.compute_capability})"

    @classmethod
    def runnable(cls, entry: EngineEntry) -> tuple[bool, str]:
        match = cls._match(entry)
        return match.ok, match.reason

    @classmethod
    def caveat(cls, entry: EngineEntry) -> str | None:
        return cls._match(entry).warning

    @classmethod
    def _match(cls, entry: EngineEntry):
        return plan_compatibility(entry, visible_device()[0], tensorrt_version())

    @classmethod
    def preferred_precisions(cls) -> tuple[str, ...]:
        return ("fp16", "fp32")

    @property
    def tensor_dtypes(self) -> dict[str, np.dtype]:
        """The plan's I/O tensors and their dtypes, as TensorRT reports them."""
        return dict(self._dtypes)

    @property
    def device(self) -> str:
        return f"cuda:{self._device.ordinal if self._device else 0}"

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._run(feed)
        except BaseException:
            # Copies may be queued on the stream, reading and writing the pinned buffers the next call
            # reuses: let them finish before anyone touches those buffers again.
            with contextlib.suppress(Exception):
                self._cudart.cudaStreamSynchronize(self._stream)
            raise

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        runtime, context, stream = self._cudart, self._context, self._stream
        h2d = runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self._inputs:
            array = np.ascontiguousarray(feed[name], dtype=self._dtypes[name])
            if not context.set_input_shape(name, array.shape):
                raise TrtserveError(f"input {name!r}: shape {list(array.shape)} is outside the engine's profile")
            buffer = self._buffers[name]
            buffer.ensure(max(array.nbytes, 1))
            buffer.host_view(array.dtype, array.shape)[...] = array
            check(runtime.cudaMemcpyAsync(buffer.device, buffer.host, array.nbytes, h2d, stream), "cudaMemcpyAsync")
            self._bind(name, buffer.device)
        shapes = {}
        for name in self._outputs:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise TrtserveError(f"output {name!r} has a data-dependent shape, which trtserve does not support")
            shapes[name] = shape
            buffer = self._buffers[name]
            buffer.ensure(max(int(np.prod(shape)) * self._dtypes[name].itemsize, 1))
            self._bind(name, buffer.device)
        if not context.execute_async_v3(stream):
            raise TrtserveError(f"{self.path}: TensorRT execution failed (see its log above)")
        for name in self._outputs:
            buffer = self._buffers[name]
            nbytes = int(np.prod(shapes[name])) * self._dtypes[name].itemsize
            check(runtime.cudaMemcpyAsync(buffer.host, buffer.device, nbytes, d2h, stream), "cudaMemcpyAsync")
        check(runtime.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return {n: self._buffers[n].host_view(self._dtypes[n], shapes[n]).copy() for n in self._outputs}

    def replay(self, iterations: int) -> float:
        """Seconds per call of the last call's work with no Python around it: its input copies, the engine,
        its output copies, one sync each (the engine alone, as `make gpu-check` compares `infer` with)."""
        runtime, context, stream = self._cudart, self._context, self._stream
        h2d = runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
        sizes = {n: int(np.prod(context.get_tensor_shape(n))) * self._dtypes[n].itemsize for n in self._buffers}
        copies_in = [(self._buffers[n].device, self._buffers[n].host, sizes[n], h2d) for n in self._inputs]
        copies_out = [(self._buffers[n].host, self._buffers[n].device, sizes[n], d2h) for n in self._outputs]
        start = time.perf_counter()
        for _ in range(iterations):
            for dst, src, nbytes, kind in copies_in:
                runtime.cudaMemcpyAsync(dst, src, nbytes, kind, stream)
            context.execute_async_v3(stream)
            for dst, src, nbytes, kind in copies_out:
                runtime.cudaMemcpyAsync(dst, src, nbytes, kind, stream)
            runtime.cudaStreamSynchronize(stream)
        return (time.perf_counter() - start) / iterations

    def _bind(self, name: str, address: int) -> None:
        if not self._context.set_tensor_address(name, address):
            raise TrtserveError(f"{self.path}: TensorRT refused the address of tensor {name!r}")

    def memory(self) -> dict[str, int | None]:
        report = super().memory()
        # device_memory_size_v2: TensorRT 10.1+ (availability refuses older ones).
        activations = int(self._engine.device_memory_size_v2)
        report["device_bytes"] = activations + sum(b.capacity for b in self._buffers.values())
        return report

    def _close_impl(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
        del self._context, self._engine, self._runtime
