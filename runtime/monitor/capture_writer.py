"""Capture files: Parquet, partitioned by model, version and hour, written by one background thread.

`submit` never waits: a record goes into a bounded queue, and when the queue is full the record is
dropped and counted. The writer thread appends records to one open file per partition, as row groups,
under a hidden temporary name (`.part-*.inprogress`, which no Parquet reader lists) and renames it to
`part-*.parquet` when a rotate limit is reached (rows, bytes or age, the age checked even when no record
follows) or the writer closes: a `.parquet` file is always complete.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("trtserve.capture")

TENSOR = pa.struct(
    [
        ("name", pa.string()),
        ("datatype", pa.string()),
        ("shape", pa.list_(pa.int64())),
        ("values", pa.list_(pa.float64())),  # numeric tensors, flattened (row-major)
        ("text", pa.list_(pa.string())),  # BYTES tensors (text), flattened
        ("hash", pa.string()),  # a redacted input's keyed hash, in place of its values
    ]
)
CAPTURE_SCHEMA = pa.schema(
    [
        ("inference_id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("model", pa.string()),
        ("version", pa.string()),
        ("role", pa.string()),  # stable | canary | shadow
        ("status", pa.int32()),
        ("latency_ms", pa.float64()),
        ("inputs", pa.list_(TENSOR)),  # null in mode `response`
        ("outputs", pa.list_(TENSOR)),  # null in mode `request` and for failed requests
    ]
)
FEEDBACK_SCHEMA = pa.schema(
    [
        ("inference_id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("model", pa.string()),
        ("label", pa.list_(pa.float64())),  # a class index or a value as one element; a vector as it is
    ]
)
# How capture files are encoded: tensor values (mostly distinct floats) byte-stream-split, which costs a
# fraction of dictionary encoding and compresses better; dictionaries only for the repeated strings;
# min/max statistics only for the scalar columns (a tensor's flattened values have no useful range).
CAPTURE_PARQUET = {
    "write_statistics": ["inference_id", "time", "model", "version", "role", "status", "latency_ms"],
    "use_dictionary": [
        "model",
        "version",
        "role",
        *(f"{side}.list.element.{key}" for side in ("inputs", "outputs") for key in ("name", "datatype")),
    ],
    "column_encoding": {
        f"{side}.list.element.values.list.element": "BYTE_STREAM_SPLIT" for side in ("inputs", "outputs")
    },
}
TAKE_MAX = 10_000  # records written in one pass at most
FEEDBACK_DIR = "_feedback"  # beside the captures; readers of the capture dataset skip `_` directories


@dataclass(frozen=True)
class Rotate:
    max_rows: int = 100_000
    max_bytes: int = 64 << 20
    max_age_s: float = 300.0


def hour_of(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H")


def capture_partition(record: dict) -> str:
    return f"model={record['model']}/version={record['version']}/hour={hour_of(record['time'])}"


def feedback_partition(record: dict) -> str:
    return f"{FEEDBACK_DIR}/model={record['model']}/hour={hour_of(record['time'])}"


def _tensor_lists(column: list[list[dict] | None]) -> pa.Array:
    """list<TENSOR> built column by column from numpy (no per-element Python objects)."""
    tensors = [t for ts in column if ts is not None for t in ts]
    offsets = np.zeros(len(column) + 1, np.int32)
    offsets[1:] = np.cumsum([0 if ts is None else len(ts) for ts in column])
    mask = pa.array([ts is None for ts in column], pa.bool_())

    def lists(key: str, arrow_type, flat: Callable):
        present = [t.get(key) is not None for t in tensors]
        parts = [flat(t[key]) for t, p in zip(tensors, present, strict=True) if p]
        sizes = iter(len(part) for part in parts)
        off = np.zeros(len(tensors) + 1, np.int32)
        off[1:] = np.cumsum([next(sizes) if p else 0 for p in present])
        if arrow_type == pa.float64():
            values = pa.array(np.concatenate(parts) if parts else np.zeros(0), pa.float64())
        else:
            values = pa.array([v for p in parts for v in p], arrow_type)
        return pa.ListArray.from_arrays(pa.array(off), values, mask=pa.array([not p for p in present], pa.bool_()))

    struct = pa.StructArray.from_arrays(
        [
            pa.array([t["name"] for t in tensors], pa.string()),
            pa.array([t["datatype"] for t in tensors], pa.string()),
            pa.array([t["shape"] for t in tensors], pa.list_(pa.int64())),
            lists("values", pa.float64(), lambda a: np.asarray(a, np.float64).reshape(-1)),
            lists("text", pa.string(), list),
            pa.array([t.get("hash") for t in tensors], pa.string()),
        ],
        fields=list(TENSOR),
    )
    return pa.ListArray.from_arrays(pa.array(offsets), struct, mask=mask)


def capture_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array([r["inference_id"] for r in records], pa.string()),
            pa.array([int(r["time"] * 1e6) for r in records], pa.timestamp("us", tz="UTC")),
            pa.array([r["model"] for r in records], pa.string()),
            pa.array([r["version"] for r in records], pa.string()),
            pa.array([r["role"] for r in records], pa.string()),
            pa.array([r["status"] for r in records], pa.int32()),
            pa.array([r["latency_ms"] for r in records], pa.float64()),
            _tensor_lists([r.get("inputs") for r in records]),
            _tensor_lists([r.get("outputs") for r in records]),
        ],
        schema=CAPTURE_SCHEMA,
    )


def feedback_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(
        [{**r, "time": datetime.fromtimestamp(r["time"], timezone.utc)} for r in records], schema=FEEDBACK_SCHEMA
    )


@dataclass
class _OpenFile:
    temporary: Path
    final: Path
    writer: pq.ParquetWriter
    opened: float
    rows: int = 0


@dataclass
class WriterStats:
    written: int = 0
    dropped: int = 0  # the queue was full
    failed: int = 0  # records lost to a write error (logged)
    files: int = 0
    closed_files: list[Path] = field(default_factory=list)


class PartitionedWriter:
    """Records (dicts) to Parquet files under `root`, in the background."""

    def __init__(
        self,
        root: str | Path,
        schema: pa.Schema,
        to_table: Callable[[list[dict]], pa.Table],
        partition: Callable[[dict], str],
        rotate: Rotate | None = None,
        queue_max_rows: int = 10_000,
        flush_s: float = 1.0,
        name: str = "capture",
        parquet_options: dict | None = None,  # pyarrow.parquet.ParquetWriter's keyword arguments
    ) -> None:
        self.root = Path(root)
        self.schema = schema
        self._to_table = to_table
        self._partition = partition
        self.rotate = rotate or Rotate()
        self.flush_s = flush_s
        self.parquet_options = parquet_options or {}
        self.stats = WriterStats()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_max_rows)
        self._open: dict[str, _OpenFile] = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"trtserve-{name}-writer", daemon=True)
        self._thread.start()

    def submit(self, record: dict) -> bool:
        """Queue a record; False (and counted as dropped) when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self.stats.dropped += 1
            return False

    def room(self) -> int:
        """Records the queue takes now without dropping."""
        return self._queue.maxsize - self._queue.qsize()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, close every file (renamed complete) and stop the thread."""
        self._stopping.set()
        self._thread.join(timeout_s)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until what was queued before this call is written (its files stay open)."""
        deadline = time.monotonic() + timeout_s
        while (self._queue.unfinished_tasks) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        while True:
            batch = self._take(self.flush_s)
            if batch:
                self._write(batch)
            self._rotate_aged(time.time())
            if self._stopping.is_set() and self._queue.empty():
                break
        for partition in list(self._open):
            self._close(partition)

    def _take(self, wait_s: float) -> list[dict]:
        """What is queued after `wait_s` (sooner when closing): taken on a timer, not woken per record, so
        the requests that hand records over never wake this thread."""
        self._stopping.wait(wait_s)
        batch = []
        while len(batch) < TAKE_MAX:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[dict]) -> None:
        groups: dict[str, list[dict]] = {}
        for record in batch:
            groups.setdefault(self._partition(record), []).append(record)
        try:
            for partition, records in groups.items():
                while records:
                    current = self._file(partition)
                    room = self.rotate.max_rows - current.rows
                    chunk, records = records[:room], records[room:]
                    current.writer.write_table(self._to_table(chunk))
                    current.rows += len(chunk)
                    self.stats.written += len(chunk)
                    if (
                        current.rows >= self.rotate.max_rows
                        or current.temporary.stat().st_size >= self.rotate.max_bytes
                    ):
                        self._close(partition)
        except Exception:  # a disk error loses these records, never the replica
            log.exception("writing %d capture records under %s failed", len(batch), self.root)
            self.stats.failed += len(batch)
        finally:
            for _ in batch:
                self._queue.task_done()

    def _file(self, partition: str) -> _OpenFile:
        if partition not in self._open:
            directory = self.root / partition
            directory.mkdir(parents=True, exist_ok=True)
            name = f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
            temporary = directory / f".{name}.inprogress"
            self._open[partition] = _OpenFile(
                temporary,
                directory / f"{name}.parquet",
                pq.ParquetWriter(temporary, self.schema, **self.parquet_options),
                time.time(),
            )
        return self._open[partition]

    def _rotate_aged(self, now: float) -> None:
        for partition, current in list(self._open.items()):
            if now - current.opened >= self.rotate.max_age_s:
                self._close(partition)

    def _close(self, partition: str) -> None:
        current = self._open.pop(partition)
        try:
            current.writer.close()
            os.replace(current.temporary, current.final)
            self.stats.files += 1
            self.stats.closed_files.append(current.final)
            del self.stats.closed_files[:-100]
        except OSError:
            log.exception("closing capture file %s failed", current.temporary)
