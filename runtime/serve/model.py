"""One model version inside a server replica: its engine, preprocessing, batcher and warm-up, and the
counts of what it answered. (Triton's metadata, config and statistics of it: runtime.serve.triton; its
batch limit under memory pressure: runtime.serve.memory_pressure.)"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.engine import dtypes, preprocessing
from runtime.engine.artifact import verify_version_dir
from runtime.engine.errors import InputError
from runtime.engine.loader import engine_for
from runtime.engine.memory import Footprint, FootprintMeter
from runtime.serve import batch_formation
from runtime.serve.app_args import ModelOptions
from runtime.serve.dynamic_batcher import DynamicBatcher
from runtime.serve.memory_pressure import MemoryPressure
from runtime.serve.protocol import InferRequest, RequestHead, text_bytes
from runtime.serve.telemetry import Telemetry

log = logging.getLogger("trtserve.server")
TEXT_BYTES_PER_TOKEN = 16  # the default text budget: a token of English is 4 to 5 bytes
JSON_BYTES_PER_VALUE = 64  # a number in JSON, its separator and (pretty-printed, nested) indentation at most
JSON_BYTES_PER_TEXT_BYTE = 6  # a byte of text escaped in JSON (\u00XX) at most
REQUEST_HEADER_BYTES = 64 << 10  # a request's JSON beyond its tensors' data: names, shapes, parameters, id
OFFLOAD_BYTES = 64 << 10
TEXT_OFFLOAD_BYTES = 2 << 10


@dataclass
class RequestCounts:
    """Triton's request statistics of one model: counts, and total nanoseconds, by outcome."""

    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    rows: int = 0  # inference rows answered
    last_ms: int = 0  # when the last request ended, ms since the epoch

    def record(self, ok: bool, seconds: float, rows: int) -> None:
        if ok:
            self.success += 1
            self.success_ns += int(seconds * 1e9)
        else:
            self.fail += 1
            self.fail_ns += int(seconds * 1e9)
        self.rows += rows
        self.last_ms = int(time.time() * 1000)


class ServedModel:
    def __init__(self, version_dir: Path, options: ModelOptions | None = None, telemetry: Telemetry | None = None):
        self.options = options or ModelOptions()
        self.version_dir = Path(version_dir)
        self.telemetry = telemetry or Telemetry()
        self._meter = FootprintMeter()
        self.footprint: Footprint | None = None  # measured by warmup()
        self.pressure: MemoryPressure | None = None  # set up by warmup()
        self.manifest = verify_version_dir(self.version_dir)
        self.engine = engine_for(
            self.version_dir, self.manifest, self.options.backend, self.options.precision, self.options.engine_options()
        )
        self.name = self.manifest.name
        self.version = str(self.manifest.version)
        self.signature = self.engine.signature
        self.preprocess = preprocessing.load(self.version_dir, self.manifest)
        serving = self.manifest.serving
        self.max_batch_size = self.options.max_batch_size or serving.max_batch_size
        if self.max_batch_size > self.signature.dims["batch"].max:
            raise InputError(
                f"{self.name}: max_batch_size {self.max_batch_size} exceeds the engine's batch limit "
                f"{self.signature.dims['batch'].max}"
            )
        delay_ms = self.options.max_queue_delay_ms
        delay_ms = serving.max_queue_delay_ms if delay_ms is None else delay_ms
        self.pad = dict(serving.pad)
        self.batcher = DynamicBatcher(
            self.engine.infer,
            self.signature,
            max_rows=self.max_batch_size,
            max_delay_s=delay_ms / 1000,
            max_queued_rows=self.options.max_queued_rows or 8 * self.max_batch_size,
            pad_values=self.pad,
            on_batch=self._after_batch,
            granularity=1 if self.engine.device == "cpu" else 8,
        )
        self.max_text_bytes = self.options.max_text_bytes or (
            TEXT_BYTES_PER_TOKEN * self.max_batch_size * self.preprocess.max_length if self.preprocess else 0
        )
        # Requests at least this large are decoded (and tokenized) off the event loop: about a millisecond of
        # work, measured here (tokenizing: 1 ms per 1-2 KB of text; numeric JSON: far less per byte).
        self.offload_bytes = TEXT_OFFLOAD_BYTES if self.preprocess else OFFLOAD_BYTES
        self.max_request_bytes = self._largest_request()
        self.ready = False
        self.warmup_s: float | None = None
        self.counts = RequestCounts()

    @property
    def on_gpu(self) -> bool:
        return self.engine.device.startswith("cuda")

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
            self.engine.infer(self.signature.synthetic_feed(sizes, rng))
        if self.pad and self.max_batch_size > 1:
            self._measure_call_cost(rng)
        self.footprint = self._meter.finish(self.engine, self.max_batch_size)
        self.pressure = MemoryPressure.configure(
            self.max_batch_size, self.options.memory_low_water_mb, self.on_gpu, self._set_batch_limit, self.label
        )
        self.warmup_s = time.perf_counter() - started
        self.ready = True
        log.info("%s warmed up in %.2f s on %s", self.label, self.warmup_s, self.engine)
        self.telemetry.warmed_up(self)
        return self.warmup_s

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def _measure_call_cost(self, rng: np.random.Generator) -> None:
        """Time one row and 8 rows at short padded dims (16 tokens, say), where a call's fixed cost is a
        visible part of the whole, so the batcher knows what a call costs."""
        sizes = {d: r.opt for d, r in self.signature.dims.items()}
        sizes.update({d: min(max(self.signature.dims[d].min, 16), self.signature.dims[d].max) for d in self.pad})
        rows = min(8, self.max_batch_size)

        def best_of(rows: int, repeats: int) -> float:
            feed = self.signature.synthetic_feed({**sizes, "batch": rows}, rng)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                self.engine.infer(feed)
                times.append(time.perf_counter() - started)
            return min(times)

        elements = float(np.prod([sizes[d] for d in self.pad]))
        self.batcher.calibrate(best_of(1, 5), best_of(rows, 3), rows, elements)
        log.info("%s: one engine call costs about %.0f padded elements", self.label, self.batcher.call_cost)

    def _largest_request(self) -> int:
        """The bytes of the largest request this model can take, in JSON or binary: its inputs at
        max_batch_size and every dim's max (or its text at max_text_bytes), every value written at its
        longest. A body beyond it is refused before it is read."""
        sizes = {d: r.max for d, r in self.signature.dims.items()}
        sizes["batch"] = self.max_batch_size
        values = sum(
            np.prod([sizes[d] if isinstance(d, str) else d for d in spec.shape]) for spec in self.signature.inputs
        )
        text = JSON_BYTES_PER_TEXT_BYTE * self.max_text_bytes + JSON_BYTES_PER_VALUE * self.max_batch_size
        return int(REQUEST_HEADER_BYTES + max(JSON_BYTES_PER_VALUE * values, text if self.preprocess else 0))

    def admit(self, head: RequestHead) -> None:
        """Check a request against this model before any of its elements is decoded or tokenized: inputs
        (names, datatypes, shapes against the signature's dims, the batch against max_batch_size, text
        against max_text_bytes) and the outputs it asks for. InputError names what is wrong."""
        if self.preprocess is not None and any(i.name == preprocessing.TEXT_INPUT for i in head.inputs):
            self._admit_text(head)
        else:
            self.signature.check({i.name: (dtypes.name_of(i.datatype), i.shape) for i in head.inputs})
            self._check_rows(head.inputs[0].shape[0] if head.inputs[0].shape else 0)
        if head.outputs is not None:
            known = [o.name for o in self.signature.outputs]
            for out in head.outputs:
                if out.name not in known:
                    raise InputError(f"unknown output {out.name!r}; this model returns {', '.join(known)}")

    def _admit_text(self, head: RequestHead) -> None:
        if len(head.inputs) > 1:
            others = sorted(i.name for i in head.inputs if i.name != preprocessing.TEXT_INPUT)
            raise InputError(f"input 'text' replaces {', '.join(self.preprocess.produces)}; also got {others}")
        text = head.inputs[0]
        if text.datatype != "BYTES" or len(text.shape) != 1 or text.shape[0] == 0:
            raise InputError(
                f"input 'text': expected BYTES of shape [batch] with batch >= 1, got {text.datatype} {list(text.shape)}"
            )
        self._check_rows(text.shape[0])
        size = text_bytes(text)
        if size > self.max_text_bytes:
            raise InputError(
                f"input 'text': {size} bytes of text; this model takes at most {self.max_text_bytes} per request "
                "(max_text_bytes)"
            )

    def _check_rows(self, rows: int) -> None:
        if rows > self.max_batch_size:
            raise InputError(f"batch of {rows} exceeds this model's max_batch_size {self.max_batch_size}")

    def feed_from(self, request: InferRequest) -> dict[str, np.ndarray]:
        """The engine feed for an admitted request: text tokenized where the model has a tokenizer, then
        checked."""
        inputs = dict(request.inputs)
        if preprocessing.TEXT_INPUT in inputs and self.preprocess is not None:
            inputs = self.preprocess(inputs[preprocessing.TEXT_INPUT])
        self.signature.validate(inputs)
        self._check_rows(next(iter(inputs.values())).shape[0])
        return inputs

    def work_of(self, feed: dict[str, np.ndarray]) -> batch_formation.Work:
        sizes = {}
        for spec in self.signature.inputs:
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, str) and dim != "batch":
                    sizes[dim] = feed[spec.name].shape[axis]
        return batch_formation.Work(next(iter(feed.values())).shape[0], sizes)

    def _after_batch(self, rows: int, seconds: float, requests: int) -> None:
        self.telemetry.batch_done(self, rows, seconds, requests)
        if self.pressure is not None:
            self.pressure.check()

    def _set_batch_limit(self, rows: int) -> None:
        self.batcher.max_rows = rows

    def close(self) -> None:
        self.batcher.close()
        self.engine.close()
