"""Payload capture and feedback of one model in a replica (the files: runtime.monitor.capture_writer).

The handler asks `wants(id)` (a hash of the inference id, runtime.monitor.sampling) and hands the
request's tensors over as they are: redaction, conversion and writing all happen in the writer's
thread, so a request never waits on capture, and a dropped input never reaches the writer's output.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime

import numpy as np

from runtime.engine.errors import TrtserveError
from runtime.monitor.capture_writer import (
    CAPTURE_PARQUET,
    CAPTURE_SCHEMA,
    FEEDBACK_SCHEMA,
    PartitionedWriter,
    Rotate,
    capture_partition,
    capture_table,
    feedback_partition,
    feedback_table,
)
from runtime.monitor.labels import RecentPredictions
from runtime.monitor.redaction import Redactor
from runtime.monitor.sampling import sampled
from runtime.serve.config import Capture


class CaptureError(TrtserveError):
    """A capture setting that cannot work (a hash key that is not set)."""


class FeedbackError(ValueError):
    """A feedback body that is not what the endpoint takes; the message names the entry at fault."""


class CaptureSink:
    def __init__(self, model: str, settings: Capture) -> None:
        self.model = model
        self.settings = settings
        redact = settings.redact
        key = os.environ.get(redact.key_env, "").encode()
        if redact.hash and not key:
            raise CaptureError(
                f"{model}: capture.redact.hash {redact.hash} needs a secret key in ${redact.key_env}, which is not set"
            )
        self.redactor = Redactor(frozenset(redact.drop), frozenset(redact.hash), key)
        destination = settings.destination_path
        rotate = Rotate(settings.rotate.max_rows, settings.rotate.max_bytes, settings.rotate.max_age_s)
        self.records = (
            PartitionedWriter(
                destination,
                CAPTURE_SCHEMA,
                self._table,
                capture_partition,
                rotate,
                settings.queue_max_rows,
                name=f"capture-{model}",
                parquet_options=CAPTURE_PARQUET,
            )
            if settings.sampling_percent > 0
            else None
        )
        self.feedback = (
            PartitionedWriter(
                destination,
                FEEDBACK_SCHEMA,
                feedback_table,
                feedback_partition,
                rotate,
                settings.queue_max_rows,
                name=f"feedback-{model}",
            )
            if destination is not None
            else None
        )
        # Classifier answers remembered to judge feedback online; (version, outcome) -> labels judged.
        self.recent = RecentPredictions() if self.feedback is not None else None
        self.judged: dict[tuple[str, str], int] = {}

    def wants(self, inference_id: str) -> bool:
        return self.records is not None and sampled(inference_id, self.settings.sampling_percent)

    def record(
        self,
        inference_id: str,
        version: str,
        role: str,
        status: int,
        latency_s: float,
        inputs: dict[str, np.ndarray] | None,
        outputs: dict[str, np.ndarray] | None,
    ) -> bool:
        mode = self.settings.mode
        return self.records.submit(
            {
                "inference_id": inference_id,
                "time": time.time(),
                "model": self.model,
                "version": version,
                "role": role,
                "status": status,
                "latency_ms": latency_s * 1e3,
                "inputs": inputs if mode in ("request", "all") else None,
                "outputs": outputs if mode in ("response", "all") else None,
            }
        )

    def _table(self, records: list[dict]):
        """Runs in the writer's thread: redaction first, then Arrow."""
        for r in records:
            if r["inputs"] is not None:
                r["inputs"] = self.redactor.tensors(r["inputs"])
            if r["outputs"] is not None:
                r["outputs"] = self.redactor.tensors(r["outputs"], redact=False)
        return capture_table(records)

    def add_feedback(self, body: object) -> int:
        """Queue every entry of a feedback body (one object or a list), or none: FeedbackError naming the
        first bad entry, OverflowError when the queue has no room for all of them."""
        if self.feedback is None:
            raise LookupError(f"model {self.model!r} has no capture destination for feedback; set capture.destination")
        entries = body if isinstance(body, list) else [body]
        if not entries:
            raise FeedbackError("feedback is an object {id, label, time?} or a non-empty list of them")
        now = time.time()
        records = [
            self._feedback_record(entry, i if isinstance(body, list) else None, now) for i, entry in enumerate(entries)
        ]
        if self.feedback.room() < len(records):
            raise OverflowError("the feedback queue is full; retry later")
        for record in records:
            self.feedback.submit(record)
            version, outcome = self.recent.judge(record["inference_id"], record["label"])
            key = (version or "", outcome)
            self.judged[key] = self.judged.get(key, 0) + 1
        return len(records)

    def remember(self, inference_id: str, version: str, output: np.ndarray) -> None:
        """A classifier's answer to a request, judged when its label comes (runtime.monitor.labels)."""
        if self.recent is not None:
            self.recent.remember(inference_id, version, output)

    def _feedback_record(self, entry: object, index: int | None, now: float) -> dict:
        where = "" if index is None else f"[{index}]"
        if not isinstance(entry, dict):
            raise FeedbackError(f"feedback{where}: expected an object {{id, label, time?}}")
        unknown = sorted(set(entry) - {"id", "label", "time"})
        if unknown:
            raise FeedbackError(f"feedback{where}: unknown key {unknown[0]!r}; expected id, label, time")
        inference_id = entry.get("id")
        if not isinstance(inference_id, str) or not inference_id:
            raise FeedbackError(f"feedback{where}.id: expected the inference id (a non-empty string)")
        label = entry.get("label")
        values = label if isinstance(label, list) else [label]
        if not values or not all(_finite_number(v) for v in values):
            raise FeedbackError(f"feedback{where}.label: expected a number or a list of numbers, got {label!r}")
        return {
            "inference_id": inference_id,
            "time": _time(entry.get("time", now), f"feedback{where}.time"),
            "model": self.model,
            "label": [float(v) for v in values],
        }

    def close(self) -> None:
        for writer in (self.records, self.feedback):
            if writer is not None:
                writer.close()


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _time(value: object, key: str) -> float:
    if _finite_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed.timestamp()
    raise FeedbackError(f"{key}: expected seconds since the epoch or an ISO 8601 time with a zone, got {value!r}")
