"""Capture files: Parquet, partitioned by model, version and hour, written by one background thread.

Records reach the thread through a queue bounded in rows and in bytes. `submit` never waits: a record
that does not fit is dropped and counted. `submit_all` takes a group of records or none and returns a
future resolved once they are written (after an fsync for a `durable` writer), so a caller can answer
only then; the thread writes at once for it, and every group queued while it wrote and synced shares the
next write and fsync (group commit). Without a waiter the thread writes what is queued every `flush_s`,
so the requests that hand records over never wake it.

Each partition has one open file, an Arrow IPC stream under a hidden name (`.part-*.inprogress.arrows`,
which no Parquet reader lists), appended one record batch per pass and flushed to the operating system
after each pass. A stream has no footer: every batch written whole before a crash reads back. At a
rotate limit (rows, bytes of the stream, or age, checked even when no record follows) and when the
writer closes, the stream becomes `part-*.parquet`, written under a hidden name and then renamed, and
the stream is removed: no file a Parquet dataset reader lists is ever half-written. A writer holds at
most `max_open_streams` streams (each an open, locked file): opening one more first rotates the least
recently written one.

Crashes. An open stream is held under an exclusive `flock`, which the kernel releases when its process
dies, SIGKILL included. When it starts and every `recover_every_s`, a writer converts the streams under
its `scope` whose lock it can take: their writer is dead (a torn last batch is dropped and counted). It
never takes a live writer's stream, so replicas can share a destination. What a pass wrote survives the
death of the process without an fsync (the kernel's page cache outlives it); only a durable writer's
records (feedback, acknowledged to its sender) also survive the loss of the machine's power. In-progress
files of earlier versions (`.part-*.inprogress`, Parquet without its footer) cannot be read and are left
alone.

The thread never dies of one bad record, one failed write or a failed recovery or rotation: what fails
is counted (`stats.failed` for records, `stats.errors` for the rest), logged once per cause, and the
thread goes on. Should it die anyway (a bug), its waiters fail, `submit_all` raises WriterStopped and
`problem()` says so, for the replica's health check.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
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
        ("time", pa.timestamp("us", tz="UTC")),  # the label's time, as its sender gave it (else `received`)
        # When the replica took it: its partition, so one POST is one partition whatever times it carries.
        # Files written before this column have none (read as null).
        ("received", pa.timestamp("us", tz="UTC")),
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
TAKE_MAX = 10_000  # records written in one pass at most (a group of submit_all is taken whole)
FEEDBACK_DIR = "_feedback"  # beside the captures; readers of the capture dataset skip `_` directories
IN_PROGRESS = ".inprogress.arrows"  # `.{name}.inprogress.arrows` becomes `{name}.parquet`
SCALAR_BYTES = 32  # a Python number or None held in a record, with its reference
ABANDONED_EMPTY_S = 3600.0  # an empty in-progress file unlocked this long was left by a writer that died
MAX_OPEN_STREAMS = 64  # per writer: open, locked files; partitions beyond it rotate the least recent


@dataclass(frozen=True)
class Rotate:
    max_rows: int = 100_000
    max_bytes: int = 64 << 20
    max_age_s: float = 300.0


class WriterStopped(RuntimeError):
    """The writer is closed, or its thread died: it takes no more records."""


class GroupTooLarge(OverflowError):
    """Records more than the whole queue holds (rows or bytes): they would never be taken, however long
    their sender waited and retried."""


def hour_of(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H")


def capture_partition(record: dict) -> str:
    return f"model={record['model']}/version={record['version']}/hour={hour_of(record['time'])}"


def feedback_partition(record: dict) -> str:
    """By the hour the label was received, not its own `time`: labels of any hours are one partition."""
    return f"{FEEDBACK_DIR}/model={record['model']}/hour={hour_of(record['received'])}"


def estimate_bytes(value: object) -> int:
    """Memory a queued record holds, estimated without copying anything: an array by its buffer (and a
    BYTES array by its elements' lengths too), a string by its length, a container by its items."""
    if isinstance(value, np.ndarray):
        if value.dtype != object:
            return value.nbytes
        return value.nbytes + sum(len(v) if isinstance(v, (bytes, str)) else SCALAR_BYTES for v in value.flat)
    if isinstance(value, (bytes, str)):
        return len(value) + SCALAR_BYTES
    if isinstance(value, dict):
        return sum(estimate_bytes(k) + estimate_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(estimate_bytes(v) for v in value) + 8 * len(value)
    return SCALAR_BYTES


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
        [
            {
                **r,
                "time": datetime.fromtimestamp(r["time"], timezone.utc),
                "received": datetime.fromtimestamp(r["received"], timezone.utc),
            }
            for r in records
        ],
        schema=FEEDBACK_SCHEMA,
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(directory: Path, durable: bool) -> None:
    """`mkdir -p`; for a durable writer each directory it makes is also fsynced into its parent, so a new
    partition, and the acknowledged records in it, survive a power loss."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for made in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another writer, which may not sync yet
            made.mkdir()
        if durable:
            _fsync(made.parent)


def _read_stream(source: pa.NativeFile) -> tuple[pa.Table | None, bool]:
    """Every whole record batch of an IPC stream (None when not even its schema is whole), and whether a
    torn last batch was left out."""
    try:
        reader = pa.ipc.open_stream(source)
    except (pa.ArrowInvalid, OSError):
        return None, True
    batches = []
    while True:
        try:
            batches.append(reader.read_next_batch())
        except StopIteration:
            return pa.Table.from_batches(batches, reader.schema), False
        except (pa.ArrowInvalid, OSError):  # the process died while writing this batch
            return pa.Table.from_batches(batches, reader.schema), True


def stream_to_parquet(stream: Path, parquet_options: dict, durable: bool) -> tuple[Path | None, int, bool]:
    """Make an in-progress stream its Parquet file (hidden until complete), then remove the stream. The
    caller holds the stream's lock. Returns the Parquet file (None when there were no rows), its rows and
    whether a torn last batch was dropped. A durable writer's rows are on disk before the stream goes."""
    final = stream.with_name(stream.name[1 : -len(IN_PROGRESS)] + ".parquet")
    rows, torn = 0, False
    if not final.exists():  # else it was made whole before its writer died with the stream not yet removed
        with pa.memory_map(str(stream)) as source:
            table, torn = _read_stream(source)
            rows = 0 if table is None else table.num_rows
            if rows:
                temporary = final.with_name(f".{final.name}.tmp")
                with pq.ParquetWriter(temporary, table.schema, **parquet_options) as writer:
                    writer.write_table(table)
                if durable:
                    _fsync(temporary)
                os.replace(temporary, final)
                if durable:
                    _fsync(final.parent)
    stream.unlink()
    return (final if rows else None), rows, torn


class _Stream:
    """One partition's in-progress file: an Arrow IPC stream, held under an exclusive flock from before
    its first byte until it is converted and removed."""

    def __init__(self, directory: Path, schema: pa.Schema, durable: bool) -> None:
        name = f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        self.path = directory / f".{name}{IN_PROGRESS}"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            # Blocks only while a recovering writer looks at this (still empty) file and lets it be.
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        try:
            self.writer = pa.ipc.new_stream(self.file, schema)
            self.file.flush()  # not empty from now on: an empty file may be one not locked yet
            if durable:  # the new name itself must survive a power loss
                _fsync(directory)
        except BaseException:
            self.release()
            raise
        self.opened = time.time()
        self.rows = 0

    @property
    def size(self) -> int:
        return self.file.tell()

    def append(self, table: pa.Table) -> None:
        self.writer.write_table(table)
        self.rows += table.num_rows

    def sync(self, durable: bool) -> None:
        self.file.flush()
        if durable:
            os.fsync(self.file.fileno())

    def release(self) -> None:
        """Close the file, which releases its lock; an error (the disk that failed) changes nothing now."""
        with contextlib.suppress(OSError):
            self.file.close()


@dataclass
class _Group:
    """Records queued together; `done`, when set, is resolved once all of them are written."""

    records: list[dict]
    nbytes: int
    done: Future | None = None


@dataclass
class WriterStats:
    written: int = 0
    dropped: int = 0  # the queue had no room for it (rows or bytes)
    failed: int = 0  # records lost to an error (logged once per cause)
    files: int = 0  # Parquet files completed
    recovered: int = 0  # rows of dead writers' streams made Parquet
    torn: int = 0  # torn last batches of dead writers' streams, dropped
    errors: int = 0  # failed recoveries and rotations by age, which lose no record (logged once per cause)


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
        queue_max_bytes: int = 256 << 20,
        flush_s: float = 1.0,
        name: str = "capture",
        parquet_options: dict | None = None,  # pyarrow.parquet.ParquetWriter's keyword arguments
        durable: bool = False,  # fsync before a submit_all future resolves
        scope: str = "",  # the part of `root` whose dead writers' streams this writer recovers
        recover_every_s: float = 60.0,
        max_open_streams: int = MAX_OPEN_STREAMS,
    ) -> None:
        self.root = Path(root)
        self.schema = schema
        self._to_table = to_table
        self._partition = partition
        self.rotate = rotate or Rotate()
        self.queue_max_rows = queue_max_rows
        self.queue_max_bytes = queue_max_bytes
        self.flush_s = flush_s
        self.name = name
        self.parquet_options = parquet_options or {}
        self.durable = durable
        self.scope = self.root / scope
        self.recover_every_s = recover_every_s
        self.max_open_streams = max_open_streams
        self.stats = WriterStats()
        self._queue: deque[_Group] = deque()
        self._queued_rows = 0
        self._held_bytes = 0  # queued or being written
        self._accepted = 0  # groups accepted since the start
        self._finished = 0  # groups written (or lost) since the start
        self._taken: list[_Group] = []  # the groups being written
        self._stopped = False
        self._died: str | None = None  # what killed the thread (an exception's type), when one did
        self._lock = threading.Lock()
        self._finished_changed = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._open: OrderedDict[str, _Stream] = OrderedDict()  # the least recently written first
        self._causes: set[tuple[str, str]] = set()
        self._thread = threading.Thread(target=self._run, name=f"trtserve-{name}-writer", daemon=True)
        self._thread.start()

    def submit(self, record: dict) -> bool:
        """Queue a record; False (and counted as dropped) when the queue has no room. Never blocks."""
        try:
            self._enqueue(_Group([record], estimate_bytes(record)))
            return True
        except (OverflowError, WriterStopped):
            self.stats.dropped += 1
            return False

    def submit_all(self, records: list[dict], nbytes: int | None = None) -> Future:
        """Queue every record or none: OverflowError when the queue has no room for all of them now
        (GroupTooLarge when it never will), WriterStopped when the writer takes no more. `nbytes`: the
        records' `estimate_bytes`, when the caller computed it off its event loop. The future resolves
        (None) once they are written, on disk for a durable writer, or fails with the error that lost
        one of them."""
        if nbytes is None:
            nbytes = sum(estimate_bytes(r) for r in records)
        group = _Group(records, nbytes, Future())
        self._enqueue(group)
        self._wake.set()
        return group.done

    @property
    def alive(self) -> bool:
        """Whether the thread runs (False once closed, or dead)."""
        return self._thread.is_alive()

    def problem(self) -> str | None:
        """Why the writer takes no more records though nobody closed it (its thread died of a bug); None
        while it runs or after close()."""
        if self._died is None:
            return None
        return f"the {self.name} writer under {self.root} stopped ({self._died}; its traceback is in the log)"

    def _enqueue(self, group: _Group) -> None:
        with self._lock:
            if self._stopped:
                raise WriterStopped(f"the {self.name} writer is not running")
            if len(group.records) > self.queue_max_rows or group.nbytes > self.queue_max_bytes:
                raise GroupTooLarge(
                    f"{len(group.records)} records of about {group.nbytes} bytes: more than the whole {self.name}"
                    f" queue holds ({self.queue_max_rows} rows, {self.queue_max_bytes} bytes)"
                )
            if (
                self._queued_rows + len(group.records) > self.queue_max_rows
                or self._held_bytes + group.nbytes > self.queue_max_bytes
            ):
                raise OverflowError(f"the {self.name} queue is full")
            self._queue.append(group)
            self._queued_rows += len(group.records)
            self._held_bytes += group.nbytes
            self._accepted += 1

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until what was queued before this call is written (its files stay open) and the recovery
        the writer does when it starts is done; False when that took longer than `timeout_s`."""
        with self._lock:
            target = self._accepted + 1  # the pass below, started by the wake-up, finishes one more
            self._accepted += 1
            self._queue.append(_Group([], 0))
        self._wake.set()
        with self._finished_changed:
            return self._finished_changed.wait_for(lambda: self._finished >= target or self._stopped, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, make every open stream Parquet and stop the thread."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the %s writer under %s did not finish within %.0f s", self.name, self.root, timeout_s)

    def _run(self) -> None:
        try:
            self._housekeeping("recovering streams", self._recover)
            recovered = time.monotonic()
            while True:
                self._wake.wait(self.flush_s)
                self._wake.clear()
                taken = self._take()
                if taken:
                    self._write(taken)
                self._finish(taken)
                self._housekeeping("rotating aged streams", self._rotate_aged)
                with self._lock:
                    if self._queue:  # more than one pass takes: the next one now
                        self._wake.set()
                if time.monotonic() - recovered >= self.recover_every_s:
                    self._housekeeping("recovering streams", self._recover)
                    recovered = time.monotonic()
                if self._stopping.is_set():
                    with self._lock:
                        if not self._queue:
                            self._stopped = True
                            break
            for partition in list(self._open):
                self._close_quietly(partition)
        except BaseException as e:  # a bug: nothing may be acknowledged that will not be written
            log.critical("the %s writer under %s stopped", self.name, self.root, exc_info=True)
            with self._lock:
                self._stopped = True
                self._died = type(e).__name__
                lost = [*self._taken, *self._queue]
                self._queue.clear()
            for group in lost:
                _resolve(group.done, WriterStopped(f"the {self.name} writer stopped"))
        finally:
            with self._finished_changed:
                self._finished_changed.notify_all()

    def _housekeeping(self, what: str, step: Callable[[], None]) -> None:
        """A step of the loop that holds no queued record (recovery, rotation by age): its failure (EMFILE
        listing the files, a file renamed meanwhile) loses none of them, so it is counted and logged once
        per cause, and the step is tried again at its next turn."""
        try:
            step()
        except Exception as e:
            self.stats.errors += 1
            self._log_once(what, e, self.scope)

    def _take(self) -> list[dict]:
        """What is queued now, up to TAKE_MAX records (a group whole)."""
        taken, rows = [], 0
        with self._lock:
            while self._queue and (not taken or rows + len(self._queue[0].records) <= TAKE_MAX):
                group = self._queue.popleft()
                rows += len(group.records)
                self._queued_rows -= len(group.records)
                taken.append(group)
            self._taken = taken
        for group in taken:
            # A waiter that gave up (its request cancelled) is not answered; its records are written all the same.
            if group.done is not None and not group.done.set_running_or_notify_cancel():
                group.done = None
        return taken

    def _finish(self, taken: list[_Group]) -> None:
        with self._finished_changed:
            self._held_bytes -= sum(g.nbytes for g in taken)
            self._finished += len(taken)
            self._taken = []
            self._finished_changed.notify_all()

    def _write(self, taken: list[_Group]) -> None:
        lost: dict[int, BaseException] = {}  # group (its index) -> why one of its records is not written
        groups: dict[str, list[tuple[int, dict]]] = {}
        for index, group in enumerate(taken):
            for record in group.records:
                try:
                    groups.setdefault(self._partition(record), []).append((index, record))
                except Exception as e:
                    self._failed("partitioning a record", e, 1, self.root)
                    lost[index] = e
        for partition, items in groups.items():
            self._write_partition(partition, items, lost)
        for index, group in enumerate(taken):
            _resolve(group.done, lost.get(index))

    def _write_partition(self, partition: str, items: list[tuple[int, dict]], lost: dict) -> None:
        appended: list[int] = []  # groups (indices) of the records in the open stream since its last sync
        try:
            while items:
                stream = self._stream(partition)
                room = self.rotate.max_rows - stream.rows
                chunk, items = items[:room], items[room:]
                table, kept = self._table(chunk, lost)
                if table is not None:
                    stream.append(table)
                    appended.extend(kept)
                if stream.rows >= self.rotate.max_rows or stream.size >= self.rotate.max_bytes:
                    self._close(partition)
                    self.stats.written += len(appended)
                    appended = []
            if partition in self._open:
                self._open[partition].sync(self.durable)
            self.stats.written += len(appended)
        except Exception as e:  # a disk error loses these records, never the writer
            self._failed("writing records", e, len(appended) + len(items), self.root / partition)
            lost.update(dict.fromkeys([*appended, *(index for index, _ in items)], e))
            # The stream may end in a torn batch now: let the recovery make Parquet of what it holds.
            stream = self._open.pop(partition, None)
            if stream is not None:
                stream.release()

    def _table(self, chunk: list[tuple[int, dict]], lost: dict) -> tuple[pa.Table | None, list[int]]:
        """The chunk's table, and the groups of the records in it. When the whole chunk cannot be made
        one, each record is tried alone: the bad ones are lost and counted, the others written."""
        try:
            return self._to_table([record for _, record in chunk]), [index for index, _ in chunk]
        except Exception as e:
            if len(chunk) == 1:
                self._failed("converting a record", e, 1, self.root)
                lost[chunk[0][0]] = e
                return None, []
        tables, kept = [], []
        for item in chunk:
            table, indices = self._table([item], lost)
            if table is not None:
                tables.append(table)
                kept.extend(indices)
        return (pa.concat_tables(tables) if tables else None), kept

    def _stream(self, partition: str) -> _Stream:
        if partition in self._open:
            self._open.move_to_end(partition)
        else:
            # Every other open stream was synced at the end of its partition's write: rotating one loses nothing.
            while len(self._open) >= self.max_open_streams:
                self._close_quietly(next(iter(self._open)))
            directory = self.root / partition
            make_directory(directory, self.durable)
            self._open[partition] = _Stream(directory, self.schema, self.durable)
        return self._open[partition]

    def _rotate_aged(self) -> None:
        now = time.time()
        for partition, stream in list(self._open.items()):
            if now - stream.opened >= self.rotate.max_age_s:
                self._close_quietly(partition)

    def _close(self, partition: str) -> None:
        """The stream ended, synced and made Parquet. An error before the sync is raised (the records
        since the last sync may be lost); once synced the records are safe in the stream, and when the
        conversion fails the stream is left (its lock released) for the recovery to convert."""
        stream = self._open.pop(partition)
        try:
            stream.writer.close()
            stream.sync(self.durable)
            try:
                final, _, _ = stream_to_parquet(stream.path, self.parquet_options, self.durable)
                self.stats.files += final is not None
            except Exception as e:
                self._log_once("converting a stream", e, stream.path)
        finally:
            stream.release()

    def _close_quietly(self, partition: str) -> None:
        """_close where every pass already synced the stream's records: an error loses none of them."""
        try:
            self._close(partition)
        except Exception as e:
            self._log_once("closing a stream", e, self.root / partition)

    def _recover(self) -> None:
        """Convert the streams under the scope that no live writer holds."""
        for path in sorted(self.scope.rglob(f".*{IN_PROGRESS}")) if self.scope.is_dir() else []:
            if any(stream.path == path for stream in self._open.values()):
                continue
            try:
                self._recover_one(path)
            except Exception as e:
                self._log_once("recovering a stream", e, path)

    def _recover_one(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # converted meanwhile by its writer
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its writer is alive
                return
            held = os.fstat(fd)
            if held.st_size == 0:
                # Its writer is between creating and locking it (microseconds), or died there long ago.
                if time.time() - held.st_mtime > ABANDONED_EMPTY_S:
                    path.unlink(missing_ok=True)
                return
            if not path.exists() or path.stat().st_ino != held.st_ino:
                return  # converted and removed by its writer between the listing and the lock
            final, rows, torn = stream_to_parquet(path, self.parquet_options, self.durable)
            self.stats.files += final is not None
            self.stats.recovered += rows
            self.stats.torn += torn
            log.warning(
                "recovered %d %s rows a dead writer left in %s%s",
                rows,
                self.name,
                path,
                " (its torn last batch dropped)" if torn else "",
            )
        finally:
            os.close(fd)

    def _failed(self, what: str, error: BaseException, records: int, where: Path) -> None:
        self.stats.failed += records
        self._log_once(what, error, where)

    def _log_once(self, what: str, error: BaseException, where: Path) -> None:
        """Logged with its traceback the first time a cause (what failed, the error's type) is met; after
        that counted, not logged, so a bad record repeated a million times is one log entry."""
        cause = (what, type(error).__name__)
        if cause not in self._causes:
            self._causes.add(cause)
            log.error(
                "the %s writer: %s failed (%s); failures of this cause are counted, not logged again",
                self.name,
                what,
                where,
                exc_info=error,
            )


def _resolve(done: Future | None, error: BaseException | None) -> None:
    if done is None:
        return
    with contextlib.suppress(InvalidStateError):  # its waiter gave up meanwhile
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
