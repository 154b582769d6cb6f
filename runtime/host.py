"""One model version inside a server replica: its engine, preprocessing, batcher, warm-up and stats."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import batching, preprocessing
from runtime.batcher import DynamicBatcher
from runtime.dtypes import from_name
from runtime.errors import InputError
from runtime.loader import load_engine
from runtime.memory import BatchLimiter, Footprint, FootprintMeter, available_bytes, gpu_free_total
from runtime.protocol import InferRequest
from runtime.signature import TensorSpec

log = logging.getLogger("trtserve.server")


@dataclass
class ModelOptions:
    backend: str = "auto"
    precision: str | None = None
    max_batch_size: int | None = None  # default: the manifest's serving.max_batch_size
    max_queue_delay_ms: float | None = None  # default: the manifest's
    max_queued_rows: int | None = None  # default: 8 batches
    timeout_s: float = 30.0
    intra_op_threads: int | None = None  # ONNX Runtime threads; default: the replica's CPUs
    spin: bool = False  # ONNX Runtime worker threads spin between calls (lower latency, more CPU)
    # Below this much available memory (host, or the GPU's for a CUDA engine) the batch limit halves,
    # back up above twice it. Default: 5% of that memory, at least 256 MiB; 0 turns it off.
    memory_low_water_mb: float | None = None


class ModelHost:
    def __init__(self, version_dir: Path, options: ModelOptions | None = None) -> None:
        self.options = options or ModelOptions()
        self.version_dir = Path(version_dir)
        ort_options = {"intra_op_threads": self.options.intra_op_threads, "spin": self.options.spin}
        self._meter = FootprintMeter()
        self.footprint: Footprint | None = None  # measured by warmup()
        self.limiter: BatchLimiter | None = None  # set up by warmup()
        self.engine = load_engine(self.version_dir, self.options.backend, self.options.precision, **ort_options)
        self.manifest = manifest = self._read_manifest()
        self.name = manifest["name"]
        self.version = str(manifest["version"])
        self.signature = self.engine.signature
        self.preprocess = preprocessing.load(self.version_dir, manifest, self.signature)
        serving = manifest["serving"]
        self.max_batch_size = self.options.max_batch_size or serving["max_batch_size"]
        if self.max_batch_size > self.signature.dims["batch"].max:
            raise InputError(
                f"{self.name}: max_batch_size {self.max_batch_size} exceeds the engine's batch limit "
                f"{self.signature.dims['batch'].max}"
            )
        delay_ms = self.options.max_queue_delay_ms
        delay_ms = serving["max_queue_delay_ms"] if delay_ms is None else delay_ms
        self.pad = dict(serving.get("pad") or {})
        self.batcher = DynamicBatcher(
            self.engine.infer,
            self.signature,
            max_rows=self.max_batch_size,
            max_delay_s=delay_ms / 1000,
            max_queued_rows=self.options.max_queued_rows or 8 * self.max_batch_size,
            pad_values=self.pad,
            on_batch=self._on_batch,
            granularity=1 if self.engine.device == "cpu" else 8,
        )
        self.ready = False
        self.warmup_s: float | None = None
        self.counts = {"success": 0, "fail": 0, "inference_rows": 0, "last_inference_ms": 0}
        self.success_ns = 0
        self.fail_ns = 0
        self.handling_ns = {"count": 0, "decode": 0, "encode": 0}  # the handler's own work on the event loop
        self.batch_observer = None  # set by the server to export batch metrics

    def _read_manifest(self) -> dict:
        import orjson

        return orjson.loads((self.version_dir / "manifest.json").read_bytes())

    @property
    def platform(self) -> str:
        return "tensorrt_plan" if self.engine.backend == "tensorrt" else "onnxruntime_onnx"

    def warmup_shapes(self) -> list[dict[str, int]]:
        """Every batch bucket (powers of two up to max_batch_size) at the opt size of the other dims,
        then the largest shape, so memory is reserved before the first request."""
        dims = self.signature.dims
        others = {d: r.opt for d, r in dims.items() if d != "batch"}
        rows = sorted({min(2**k, self.max_batch_size) for k in range(self.max_batch_size.bit_length() + 1)})
        shapes = [{"batch": b, **others} for b in rows]
        largest = {"batch": self.max_batch_size, **{d: r.max for d, r in dims.items() if d != "batch"}}
        if largest not in shapes:
            shapes.append(largest)
        return shapes

    def warmup(self) -> float:
        """Run every warm-up shape once (like Triton's model_warmup); the model is ready afterwards."""
        started = time.perf_counter()
        rng = np.random.default_rng(0)
        for sizes in self.warmup_shapes():
            feed = {}
            for spec, shape in zip(self.signature.inputs, self.signature.shapes_at(sizes).values(), strict=True):
                feed[spec.name] = _warmup_tensor(spec, shape, rng)
            self.engine.infer(feed)
        if self.pad and self.max_batch_size > 1:
            self._calibrate(rng)
        self.footprint = self._meter.finish(self.engine, self.max_batch_size)
        self.limiter = self._batch_limiter()
        self.warmup_s = time.perf_counter() - started
        self.ready = True
        log.info("%s v%s warmed up in %.2f s on %s", self.name, self.version, self.warmup_s, self.engine)
        return self.warmup_s

    def _calibrate(self, rng) -> None:
        """Time one row and 8 rows at short padded dims (16 tokens, say), where a call's fixed cost is a
        visible part of the whole, so the batcher knows what a call costs."""
        sizes = {d: r.opt for d, r in self.signature.dims.items()}
        sizes.update({d: min(max(self.signature.dims[d].min, 16), self.signature.dims[d].max) for d in self.pad})
        rows = min(8, self.max_batch_size)

        def best_of(rows: int, repeats: int) -> float:
            feed = {
                spec.name: _warmup_tensor(spec, shape, rng)
                for spec, shape in zip(
                    self.signature.inputs, self.signature.shapes_at({**sizes, "batch": rows}).values(), strict=True
                )
            }
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                self.engine.infer(feed)
                times.append(time.perf_counter() - started)
            return min(times)

        elements = float(np.prod([sizes[d] for d in self.pad]))
        self.batcher.calibrate(best_of(1, 5), best_of(rows, 3), rows, elements)
        log.info(
            "%s v%s: one engine call costs about %.0f padded elements", self.name, self.version, self.batcher.call_cost
        )

    def feed_from(self, request: InferRequest) -> dict[str, np.ndarray]:
        """The engine feed for a request: text tokenized where the model has a tokenizer, then checked."""
        inputs = dict(request.inputs)
        if preprocessing.TEXT_INPUT in inputs and self.preprocess is not None:
            if len(inputs) > 1:
                others = sorted(set(inputs) - {preprocessing.TEXT_INPUT})
                raise InputError(f"input 'text' replaces {', '.join(self.preprocess.produces)}; also got {others}")
            inputs = self.preprocess(inputs[preprocessing.TEXT_INPUT])
        self.signature.validate(inputs)
        rows = next(iter(inputs.values())).shape[0]
        if rows > self.max_batch_size:
            raise InputError(f"batch of {rows} exceeds this model's max_batch_size {self.max_batch_size}")
        if request.outputs is not None:
            known = [o.name for o in self.signature.outputs]
            for out in request.outputs:
                if out.name not in known:
                    raise InputError(f"unknown output {out.name!r}; this model returns {', '.join(known)}")
        return inputs

    def work_of(self, feed: dict[str, np.ndarray]) -> batching.Work:
        sizes = {}
        for spec in self.signature.inputs:
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, str) and dim != "batch":
                    sizes[dim] = feed[spec.name].shape[axis]
        return batching.Work(next(iter(feed.values())).shape[0], sizes)

    def _on_batch(self, rows: int, seconds: float, requests: int) -> None:
        if self.batch_observer:
            self.batch_observer(self, rows, seconds, requests)
        self.check_memory()

    def _batch_limiter(self) -> BatchLimiter | None:
        low_mb = self.options.memory_low_water_mb
        if low_mb == 0:
            return None
        if low_mb is None:
            # 5% of the memory being watched: the GPU's for a CUDA engine, else the host's.
            gpu = gpu_free_total() if self.engine.device.startswith("cuda") else None
            total = gpu[1] if gpu else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            low = max(256 * 2**20, int(0.05 * total))
        else:
            low = int(low_mb * 2**20)
        return BatchLimiter(self.max_batch_size, low)

    def available_memory(self) -> int | None:
        """What is left where this model allocates: the GPU's free memory for a CUDA engine, else the host's."""
        return available_bytes(self.engine.device.startswith("cuda"))

    def check_memory(self, now: float | None = None) -> None:
        """Under memory pressure the batch limit steps down before an allocation fails (and back up)."""
        if self.limiter is None:
            return
        now = time.monotonic() if now is None else now
        if not self.limiter.due(now):
            return
        changed = self.limiter.update(self.available_memory(), now)
        if changed:
            self.batcher.max_rows = changed[1]
            log.warning(
                "%s v%s: memory %s; max_batch_size %d -> %d",
                self.name,
                self.version,
                "pressure" if changed[1] < changed[0] else "recovered",
                *changed,
            )

    def record_handling(self, decode_s: float, encode_s: float) -> None:
        """A successful request's time in the handler on the event loop: decoding it (protocol, tensors or
        tokens, up to queueing for the batcher) and encoding its answer."""
        self.handling_ns["count"] += 1
        self.handling_ns["decode"] += int(decode_s * 1e9)
        self.handling_ns["encode"] += int(encode_s * 1e9)

    def record(self, ok: bool, seconds: float, rows: int = 0) -> None:
        self.counts["success" if ok else "fail"] += 1
        self.counts["inference_rows"] += rows
        self.counts["last_inference_ms"] = int(time.time() * 1000)
        if ok:
            self.success_ns += int(seconds * 1e9)
        else:
            self.fail_ns += int(seconds * 1e9)

    # --- metadata, Triton's config and stats ---------------------------------------------------

    def inputs_metadata(self) -> list[dict]:
        entries = [_tensor_metadata(t) for t in self.signature.inputs]
        if self.preprocess is not None:
            entries.append({"name": preprocessing.TEXT_INPUT, "datatype": "BYTES", "shape": [-1]})
        return entries

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": self.inputs_metadata(),
            "outputs": [_tensor_metadata(t) for t in self.signature.outputs],
        }

    def triton_config(self) -> dict:
        def entry(meta: dict, optional: bool = False) -> dict:
            data = {
                "name": meta["name"],
                "data_type": f"TYPE_{'STRING' if meta['datatype'] == 'BYTES' else meta['datatype']}",
                "dims": meta["shape"][1:],
            }
            if optional:
                data["optional"] = True
            return data

        optional = self.preprocess is not None
        return {
            "name": self.name,
            "platform": self.platform,
            "backend": "tensorrt" if self.engine.backend == "tensorrt" else "onnxruntime",
            "max_batch_size": self.max_batch_size,
            "input": [entry(m, optional) for m in self.inputs_metadata()],
            "output": [entry(_tensor_metadata(t)) for t in self.signature.outputs],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(self.batcher.max_delay_s * 1e6),
                "default_queue_policy": {"max_queue_size": self.batcher.max_queued_rows},
            },
            "model_warmup": [{"name": f"batch{s['batch']}", "batch_size": s["batch"]} for s in self.warmup_shapes()],
            "parameters": {
                "precision": {"string_value": self.engine.precision},
                "device": {"string_value": self.engine.device},
                "warmup_seconds": {"string_value": f"{self.warmup_s:.3f}" if self.warmup_s is not None else ""},
            },
        }

    def stats(self) -> dict:
        b = self.batcher.stats
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.counts["last_inference_ms"],
            "inference_count": self.counts["inference_rows"],
            "execution_count": b.batches,
            "inference_stats": {
                "success": {"count": self.counts["success"], "ns": self.success_ns},
                "fail": {"count": self.counts["fail"], "ns": self.fail_ns},
                "queue": {"count": b.rows, "ns": b.queue_ns},
                # Triton's split of an engine call: stacking, the engine itself (timed in its thread),
                # and the rest (back on the event loop, results split), which grows when the loop is busy.
                "compute_input": {"count": b.batches, "ns": b.input_ns},
                "compute_infer": {"count": b.batches, "ns": b.infer_ns},
                "compute_output": {"count": b.batches, "ns": b.output_ns},
            },
            "batch_stats": [
                {"batch_size": size, "compute_infer": {"count": count}} for size, count in sorted(b.batch_sizes.items())
            ],
            # Not Triton's: the handler's decoding and encoding of successful requests, on the event loop.
            "request_handling": {
                "count": self.handling_ns["count"],
                "decode_ns": self.handling_ns["decode"],
                "encode_ns": self.handling_ns["encode"],
            },
            # Not Triton's: the last engine calls (oldest first), rows and engine time in microseconds each.
            "recent_engine_calls": {
                "rows": [rows for rows, _ in b.recent_calls],
                "infer_us": [ns // 1000 for _, ns in b.recent_calls],
            },
            "memory": {**self.engine.memory(), "footprint": self.footprint.to_dict() if self.footprint else None},
            "warmup_seconds": self.warmup_s,
            "max_batch_size": {"configured": self.max_batch_size, "now": self.batcher.max_rows},
        }

    def close(self) -> None:
        self.batcher.close()
        self.engine.close()


def _tensor_metadata(spec: TensorSpec) -> dict:
    return {
        "name": spec.name,
        "datatype": from_name(spec.dtype).kserve,
        "shape": [d if isinstance(d, int) else -1 for d in spec.shape],
    }


def _warmup_tensor(spec: TensorSpec, shape, rng) -> np.ndarray:
    dtype = from_name(spec.dtype).numpy
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return np.ones(shape, dtype)
    return np.ones(shape, dtype)  # valid for ids and masks alike


__all__ = ["ModelHost", "ModelOptions"]
