"""Payload capture and feedback of one model in a replica (the files: runtime.monitor.capture_writer).

The handler asks `wants(id)` (a keyed hash of the inference id, runtime.monitor.capture_sampling) and hands the
request's tensors over as they are: redaction, conversion and writing all happen in the writer's
thread, so a request never waits on capture, and a dropped input never reaches the writer's output.
Captures are flushed to the OS every `capture.flush_s`; they survive a crash of the replica, not a power
loss. Feedback is durable when acknowledged: `add_feedback` returns once its labels are fsynced. Its
labels are partitioned by the hour they were received (one POST, one partition); each keeps its `time`.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import orjson

from runtime.engine.errors import TrtserveError
from runtime.monitor.capture_sampling import MAX_KEY_BYTES, sampled
from runtime.monitor.capture_writer import (
    CAPTURE_PARQUET,
    CAPTURE_SCHEMA,
    FEEDBACK_DIR,
    FEEDBACK_SCHEMA,
    GroupTooLarge,
    PartitionedWriter,
    Rotate,
    WriterStopped,
    capture_partition,
    capture_table,
    estimate_bytes,
    feedback_partition,
    feedback_table,
)
from runtime.monitor.labels import RecentPredictions
from runtime.monitor.redaction import Redactor
from runtime.serve.app_args import Capture
from runtime.serve.protocol import MAX_ID_BYTES

MAX_FEEDBACK_ENTRIES = 10_000  # labels in one POST
FEEDBACK_WAIT_S = 30.0  # for the labels' fsync; beyond it the POST is answered 503, to be retried
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp()
AHEAD_S = 86_400.0  # a label's time may be this far in the future (clocks differ), no further
SHOWN_CHARS = 40  # of a bad value, quoted in an error


class CaptureError(TrtserveError):
    """A capture setting that cannot work (a hash key that is not set)."""


class FeedbackError(ValueError):
    """A feedback body that is not what the endpoint takes; the message names the entry at fault."""


class FeedbackUnavailable(OverflowError):
    """Feedback cannot be taken now; nothing was acknowledged and the sender retries (503 + Retry-After).
    When the queue was full or the writer had stopped, none of the labels was kept. When the writer had
    taken them but their write failed or was not confirmed within FEEDBACK_WAIT_S, some or all of them
    may still be written (a write, once begun, is not called off): a retry may then store a label twice,
    which the report tolerates, as it keeps one label per id (the latest by `time`)."""


class CaptureSink:
    def __init__(self, model: str, settings: Capture, sampling_key: bytes) -> None:
        self.model = model
        self.settings = settings
        if settings.sampling_percent > 0 and not 0 < len(sampling_key) <= MAX_KEY_BYTES:
            raise CaptureError(
                f"{model}: capture sampling needs a secret key of 1 to {MAX_KEY_BYTES} bytes, "
                f"got {len(sampling_key)} bytes"
            )
        self.sampling_key = sampling_key
        redact = settings.redact
        key = os.environ.get(redact.key_env, "").encode()
        if redact.hash and not key:
            raise CaptureError(
                f"{model}: capture.redact.hash {redact.hash} needs a secret key in ${redact.key_env}, which is not set"
            )
        self.redactor = Redactor(frozenset(redact.drop), frozenset(redact.hash), key)
        destination = settings.destination_path
        rotate = Rotate(settings.rotate.max_rows, settings.rotate.max_bytes, settings.rotate.max_age_s)
        bounds = {
            "rotate": rotate,
            "queue_max_rows": settings.queue_max_rows,
            "queue_max_bytes": settings.queue_max_bytes,
            "flush_s": settings.flush_s,
        }
        self.records = (
            PartitionedWriter(
                destination,
                CAPTURE_SCHEMA,
                self._table,
                capture_partition,
                name=f"capture-{model}",
                parquet_options=CAPTURE_PARQUET,
                scope=f"model={model}",
                **bounds,
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
                name=f"feedback-{model}",
                durable=True,
                scope=f"{FEEDBACK_DIR}/model={model}",
                # Room for the largest POST whatever queue_max_rows says: else that POST is a 503 forever.
                **{**bounds, "queue_max_rows": max(settings.queue_max_rows, MAX_FEEDBACK_ENTRIES)},
            )
            if destination is not None
            else None
        )
        # Classifier answers remembered to judge feedback online; (version, outcome) -> labels judged.
        self.recent = RecentPredictions() if self.feedback is not None else None
        self.judged: dict[tuple[str, str], int] = {}

    def wants(self, inference_id: str) -> bool:
        return self.records is not None and sampled(inference_id, self.settings.sampling_percent, self.sampling_key)

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
        """Runs in the writer's thread: redaction first, then Arrow. The records are left as they are (the
        writer tries them one by one when a batch of them fails)."""
        return capture_table(
            [
                {
                    **r,
                    "inputs": None if r["inputs"] is None else self.redactor.tensors(r["inputs"]),
                    "outputs": None if r["outputs"] is None else self.redactor.tensors(r["outputs"], redact=False),
                }
                for r in records
            ]
        )

    def problem(self) -> str | None:
        """Why this model's capture or feedback is broken until the replica is replaced (a writer's thread
        died: feedback is answered 503 from then on), for the deployment's health check; None when fine."""
        writers = (w for w in (self.records, self.feedback) if w is not None)
        return next((p for p in (w.problem() for w in writers) if p is not None), None)

    async def add_feedback(self, body: bytes | bytearray | memoryview | object) -> int:
        """Write every entry of a feedback body (one object or a list) to local disk, or none: returns once
        they are fsynced (the writer's thread syncs; this only awaits it). `body` is the request's JSON
        bytes, or a document already parsed (anything else than bytes, bytearray or memoryview).
        FeedbackError names what is wrong: malformed JSON, the first bad entry, or a POST larger than the
        feedback queue could ever hold; FeedbackUnavailable when they cannot be written now. Parsing,
        checking and sizing (about 10 us a label) and judging run off the event loop."""
        if self.feedback is None:
            raise LookupError(f"model {self.model!r} has no capture destination for feedback; set capture.destination")
        records, nbytes = await asyncio.to_thread(self._feedback_records, body)
        try:
            written = self.feedback.submit_all(records, nbytes)
        except GroupTooLarge:
            raise FeedbackError(
                f"feedback: {len(records)} labels take about {nbytes / 2**20:.1f} MiB once parsed, more than the"
                f" feedback queue holds ({self.feedback.queue_max_bytes / 2**20:.1f} MiB, capture.queue_max_bytes):"
                " send fewer or shorter labels in one POST"
            ) from None
        except OverflowError:
            raise FeedbackUnavailable("the feedback queue is full; retry later") from None
        except WriterStopped:
            raise FeedbackUnavailable("feedback cannot be written now (its writer stopped); retry later") from None
        try:
            await asyncio.wait_for(asyncio.wrap_future(written), FEEDBACK_WAIT_S)
        except Exception:  # a write error or the time-out; the cause is in the replica's log, not for the sender
            raise FeedbackUnavailable("feedback could not be written to disk; retry later") from None
        for key, count in (await asyncio.to_thread(self._judge, records)).items():
            self.judged[key] = self.judged.get(key, 0) + count
        return len(records)

    def _feedback_records(self, body: object) -> tuple[list[dict], int]:
        """The records of a body (JSON bytes or a document), and the bytes they hold in the queue."""
        if isinstance(body, (bytes, bytearray, memoryview)):
            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError as e:
                raise FeedbackError(f"malformed JSON: {e}") from None
        entries = body if isinstance(body, list) else [body]
        if not entries:
            raise FeedbackError("feedback is an object {id, label, time?} or a non-empty list of them")
        if len(entries) > MAX_FEEDBACK_ENTRIES:
            raise FeedbackError(
                f"feedback: {len(entries)} entries; at most {MAX_FEEDBACK_ENTRIES} in one POST, send the rest in more"
            )
        now = time.time()
        records = [
            self._feedback_record(entry, i if isinstance(body, list) else None, now) for i, entry in enumerate(entries)
        ]
        return records, sum(estimate_bytes(r) for r in records)

    def _judge(self, records: list[dict]) -> Counter[tuple[str, str]]:
        """(version, outcome) -> labels, against the answers this replica remembers."""
        judged: Counter[tuple[str, str]] = Counter()
        for record in records:
            version, outcome = self.recent.judge(record["inference_id"], record["label"])
            judged[(version or "", outcome)] += 1
        return judged

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
            raise FeedbackError(f"feedback{where}: unknown key {_shown(unknown[0])}; expected id, label, time")
        inference_id = entry.get("id")
        if not isinstance(inference_id, str) or not inference_id:
            raise FeedbackError(f"feedback{where}.id: expected the inference id (a non-empty string)")
        try:
            id_bytes = len(inference_id.encode())
        except UnicodeEncodeError:
            raise FeedbackError(f"feedback{where}.id: not valid UTF-8 (a lone surrogate)") from None
        if id_bytes > MAX_ID_BYTES:
            raise FeedbackError(
                f"feedback{where}.id: {id_bytes} bytes; an inference id is at most {MAX_ID_BYTES} bytes (UTF-8)"
            )
        label = entry.get("label")
        values = label if isinstance(label, list) else [label]
        if not values or not all(_finite(v) is not None for v in values):
            raise FeedbackError(f"feedback{where}.label: expected a number or a list of numbers, got {_shown(label)}")
        return {
            "inference_id": inference_id,
            "time": _time(entry.get("time", now), f"feedback{where}.time", now),
            "received": now,
            "model": self.model,
            "label": [float(v) for v in values],
        }

    def close(self) -> None:
        for writer in (self.records, self.feedback):
            if writer is not None:
                writer.close()


def _finite(value: object) -> float | None:
    """A JSON number as a float; None for anything else (booleans, NaN, infinities, or too large)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return number if math.isfinite(number) else None


def _time(value: object, key: str, now: float) -> float:
    """Seconds since the epoch, from a number of them or an ISO 8601 time with a zone, between 2000-01-01
    and a day from now: a time outside would land in a partition nobody reads, or none."""
    latest = now + AHEAD_S
    expected = f"{key}: expected seconds since the epoch or an ISO 8601 time with a zone, got {_shown(value)}"
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise FeedbackError(expected) from None
        if parsed.tzinfo is None:
            raise FeedbackError(f"{key}: {_shown(value)} has no time zone; add one (Z for UTC, or +hh:mm)")
        seconds = parsed.timestamp()
    else:
        seconds = _finite(value)
        if seconds is None:
            raise FeedbackError(expected)
        if latest < seconds and EARLIEST <= seconds / 1000 <= latest:
            raise FeedbackError(
                f"{key}: {_shown(value)} looks like milliseconds since the epoch (Date.now()); send seconds"
                f" ({seconds / 1000:.3f})"
            )
    if not EARLIEST <= seconds <= latest:
        raise FeedbackError(f"{key}: {_shown(value)} is not between 2000-01-01 and a day from now")
    return seconds


def _shown(value: object) -> str:
    """A value quoted in an error, cut short: the body it came from may be large."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."
