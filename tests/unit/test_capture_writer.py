"""The capture writer's promises without Ray: it outlives bad records and failed writes (counted, logged
once), a group of records is acknowledged only once written, the queue is bounded in bytes, and what a
writer killed with SIGKILL had written is made Parquet by the next writer, never a live writer's file."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from runtime.monitor.capture_writer import (
    CAPTURE_SCHEMA,
    FEEDBACK_SCHEMA,
    IN_PROGRESS,
    GroupTooLarge,
    PartitionedWriter,
    Rotate,
    WriterStopped,
    capture_partition,
    capture_table,
    estimate_bytes,
    feedback_partition,
    feedback_table,
    stream_to_parquet,
)

ROOT = Path(__file__).resolve().parents[2]
T = 1_780_000_000.0  # 2026-05-28T20:26:40Z


def _label(i: int, t: float = T, received: float | None = None) -> dict:
    """A label of time `t`, received then unless said otherwise."""
    return {
        "inference_id": f"id-{i}",
        "time": t,
        "received": t if received is None else received,
        "model": "m",
        "label": [float(i)],
    }


def _capture(i: int, values: np.ndarray | None = None) -> dict:
    return {
        "inference_id": f"id-{i}",
        "time": time.time(),
        "model": "m",
        "version": "1",
        "role": "stable",
        "status": 200,
        "latency_ms": 1.0,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "values": values}],
        "outputs": None,
    }


def _feedback_writer(root: Path, **options) -> PartitionedWriter:
    options = {"flush_s": 0.05, "durable": True, "scope": "_feedback", **options}
    return PartitionedWriter(root, FEEDBACK_SCHEMA, feedback_table, feedback_partition, **options)


def _rows(root: Path) -> list[dict]:
    """What a dataset reader of the destination reads (feedback apart: readers of captures skip `_` names).
    Every file it lists must be complete Parquet."""
    directory = root / "_feedback" if (root / "_feedback").is_dir() else root
    return ds.dataset(directory, format="parquet").to_table().to_pylist()


def _streams(root: Path) -> list[Path]:
    return sorted(root.rglob(f".*{IN_PROGRESS}"))


# bad records and failed writes


def test_a_record_that_cannot_be_partitioned_is_counted_and_the_next_one_written(tmp_path, caplog):
    """The bug of before: a label time of 1e20 (no hour) raised outside the writer's `try` and killed it."""
    writer = _feedback_writer(tmp_path)
    with caplog.at_level(logging.ERROR, "trtserve.capture"):
        for i in range(5):
            writer.submit(_label(i, t=1e20))
        writer.submit(_label(7))
        assert writer.flush()
    assert writer.stats.failed == 5 and writer.stats.written == 1
    causes = [r for r in caplog.records if "partitioning a record failed" in r.getMessage()]
    assert len(causes) == 1  # once per cause, not once per record
    assert writer.submit_all([_label(8)]).result(10) is None  # still writing
    writer.close()
    assert sorted(r["inference_id"] for r in _rows(tmp_path)) == ["id-7", "id-8"]


def test_one_bad_record_in_a_batch_is_found_and_the_others_written(tmp_path):
    def picky(records):
        if any(r["inference_id"] == "bad" for r in records):
            raise ValueError("this record cannot be converted")
        return capture_table(records)

    writer = PartitionedWriter(tmp_path, CAPTURE_SCHEMA, picky, capture_partition, flush_s=0.05)
    for i in range(3):
        writer.submit(_capture(i, np.ones((1, 2))))
    writer.submit({**_capture(0, np.ones((1, 2))), "inference_id": "bad"})
    writer.submit(_capture(3, np.ones((1, 2))))
    writer.close()
    assert (writer.stats.written, writer.stats.failed) == (4, 1)
    assert sorted(r["inference_id"] for r in _rows(tmp_path)) == ["id-0", "id-1", "id-2", "id-3"]


def test_a_group_is_acknowledged_once_written_and_fails_when_one_of_its_records_is_lost(tmp_path):
    writer = _feedback_writer(tmp_path)
    good = writer.submit_all([_label(0), _label(1)])
    assert good.result(10) is None
    (stream,) = _streams(tmp_path)
    with _stream_rows(stream) as table:  # written before the acknowledgement, readable without a footer
        assert table.column("inference_id").to_pylist() == ["id-0", "id-1"]
    bad = writer.submit_all([_label(2), _label(3, t=1e20)])
    with pytest.raises((ValueError, OverflowError, OSError)):
        bad.result(10)
    writer.close()
    assert writer.stats.failed == 1


@contextlib.contextmanager
def _stream_rows(path: Path):
    """The rows of an in-progress stream, as the recovery reads them."""
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_stream(source)
        batches = []
        with contextlib.suppress(StopIteration):
            while True:
                batches.append(reader.read_next_batch())
        yield pa.Table.from_batches(batches, reader.schema)


def test_a_dead_writer_thread_fails_its_waiters_and_refuses_more(tmp_path, monkeypatch):
    writer = _feedback_writer(tmp_path, flush_s=0.2)
    assert writer.alive and writer.problem() is None
    entered = threading.Event()

    def broken():  # a bug where the thread holds records, outside every per-record guard
        entered.set()
        raise RuntimeError("a bug")

    monkeypatch.setattr(writer, "_take", broken)
    assert entered.wait(10)
    writer._thread.join(10)
    with pytest.raises(WriterStopped, match="not running"):
        writer.submit_all([_label(0)])
    assert writer.submit(_label(1)) is False and writer.stats.dropped == 1
    assert not writer.alive
    assert writer.problem() == (
        f"the capture writer under {tmp_path} stopped (RuntimeError; its traceback is in the log)"
    )


def test_a_closed_writer_is_no_problem(tmp_path):
    writer = _feedback_writer(tmp_path)
    writer.close()
    assert not writer.alive and writer.problem() is None


def test_a_recovery_that_fails_is_counted_logged_once_and_the_writer_goes_on(tmp_path, monkeypatch, caplog):
    """The bug of before: listing the streams to recover (EMFILE, a directory renamed meanwhile) raised outside
    the per-stream guard and stopped the writer for good: every later label was a 503."""
    (tmp_path / "_feedback").mkdir()

    def rglob(self, pattern):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Path, "rglob", rglob)
    with caplog.at_level(logging.ERROR, "trtserve.capture"):
        writer = _feedback_writer(tmp_path, recover_every_s=0.02)  # fails at its start, then again and again
        time.sleep(0.3)
        assert writer.submit_all([_label(0)]).result(10) is None
    assert writer.alive and writer.problem() is None
    assert writer.stats.errors >= 3
    causes = [r for r in caplog.records if "recovering streams failed" in r.getMessage()]
    assert len(causes) == 1
    monkeypatch.undo()
    writer.close()
    assert [r["inference_id"] for r in _rows(tmp_path)] == ["id-0"]


def test_a_write_that_fails_loses_its_records_and_the_writer_goes_on(tmp_path, monkeypatch):
    import runtime.monitor.capture_writer as capture_writer

    writer = _feedback_writer(tmp_path)
    assert writer.submit_all([_label(0)]).result(10) is None
    real = capture_writer.os.fsync
    failing = {"on": True}

    def fsync(fd):
        if failing["on"]:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(capture_writer.os, "fsync", fsync)
    with pytest.raises(OSError, match="Input/output error"):
        writer.submit_all([_label(1)]).result(10)
    assert writer.stats.failed == 1
    failing["on"] = False
    assert writer.submit_all([_label(2)]).result(10) is None
    writer.close()
    # The failed stream was left for the recovery, which takes it when the writer next starts.
    later = _feedback_writer(tmp_path)
    later.close()
    assert {"id-0", "id-2"} <= {r["inference_id"] for r in _rows(tmp_path)}


def test_a_writer_holds_a_bounded_number_of_open_streams_the_least_recently_written_rotated(tmp_path):
    hours = [T + 3600 * h for h in range(4)]
    writer = _feedback_writer(tmp_path, max_open_streams=3)
    for i, received in enumerate([*hours[:3], hours[0]]):  # hours 0, 1, 2, then 0 again: 1 is the least recent
        writer.submit_all([_label(i, received=received)]).result(10)
    assert len(_streams(tmp_path)) == 3
    writer.submit_all([_label(4, received=hours[3])]).result(10)
    open_hours = sorted(p.parent.name for p in _streams(tmp_path))
    assert open_hours == ["hour=2026-05-28T20", "hour=2026-05-28T22", "hour=2026-05-28T23"]
    assert [r["inference_id"] for r in _rows(tmp_path)] == ["id-1"]  # made Parquet, as a rotation does
    writer.submit_all([_label(5, received=hours[1])]).result(10)  # its partition again: a new stream
    assert len(_streams(tmp_path)) == 3
    writer.close()
    assert sorted(r["inference_id"] for r in _rows(tmp_path)) == [f"id-{i}" for i in range(6)]


def test_a_durable_writer_syncs_each_directory_it_makes_into_its_parent(tmp_path, monkeypatch):
    import runtime.monitor.capture_writer as capture_writer

    synced = []
    real = capture_writer._fsync
    monkeypatch.setattr(capture_writer, "_fsync", lambda path: (synced.append(Path(path)), real(path)))
    root = tmp_path / "destination"
    writer = _feedback_writer(root)
    assert writer.submit_all([_label(0)]).result(10) is None
    partition = root / "_feedback" / "model=m" / "hour=2026-05-28T20"
    # Each new directory's name is in its parent on disk before the label is acknowledged.
    assert {tmp_path, root, root / "_feedback", partition.parent} <= set(synced)
    writer.close()


def test_a_group_larger_than_the_whole_queue_is_told_apart_from_a_full_queue(tmp_path):
    writer = _feedback_writer(tmp_path, queue_max_rows=3, queue_max_bytes=1 << 20)
    with pytest.raises(GroupTooLarge, match=r"4 records of about \d+ bytes: more than the whole capture queue holds"):
        writer.submit_all([_label(i) for i in range(4)])
    with pytest.raises(GroupTooLarge, match=r"\(3 rows, 1048576 bytes\)"):
        writer.submit_all([{**_label(0), "inference_id": "x" * (1 << 20)}])
    assert writer.submit_all([_label(i) for i in range(3)]).result(10) is None
    writer.close()


# a queue bounded in bytes


def test_the_queue_is_bounded_in_bytes_as_well_as_rows(tmp_path):
    entered, release = threading.Event(), threading.Event()

    def slow_table(records):
        entered.set()
        release.wait(10)
        return capture_table(records)

    writer = PartitionedWriter(
        tmp_path, CAPTURE_SCHEMA, slow_table, capture_partition, queue_max_bytes=1 << 20, flush_s=0.01
    )
    writer.submit(_capture(0, np.ones((1, 2))))
    assert entered.wait(10)  # the writer holds record 0 and is stuck writing it
    big = np.zeros((1, 50_000))  # 400 kB
    accepted = [writer.submit(_capture(i, big)) for i in range(1, 4)]
    assert accepted == [True, True, False]  # 10,000 rows would fit; 1 MiB does not
    assert writer.submit(_capture(9, np.zeros((1, 200_000)))) is False  # 1.6 MB: more than the whole bound
    assert writer.stats.dropped == 2
    release.set()
    assert writer.flush()
    assert writer.submit(_capture(4, big))  # written, so no longer held
    writer.close()
    assert writer.stats.written == 4


def test_a_record_is_sized_from_its_arrays_and_strings():
    text = np.array([b"a" * 1000, b"b" * 3000], dtype=object)
    floats = np.zeros((10, 100), np.float32)
    record = {"inference_id": "x" * 200, "inputs": {"text": text, "x": floats}}
    size = estimate_bytes(record)
    assert 4000 + 4000 + 200 <= size <= 4000 + 4000 + 200 + 1000


# crashes: what a SIGKILLed writer wrote, recovered by the next one


def _child(root: Path, body: str) -> subprocess.Popen:
    """A process that writes under `root` as a replica would; it prints `written` when it has."""
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        import numpy as np
        from runtime.monitor.capture_writer import *
        root = sys.argv[1]
        def label(i):
            return {"inference_id": f"id-{i}", "time": 1_780_000_000.0, "received": 1_780_000_000.0, "model": "m",
                    "label": [float(i)]}
        """
    ) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", script, str(root)], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )


def _written(child: subprocess.Popen) -> None:
    assert child.stdout.readline().strip() == "written", "the child process did not write"


FEEDBACK_CHILD = """
    writer = PartitionedWriter(root, FEEDBACK_SCHEMA, feedback_table, feedback_partition, durable=True,
                               flush_s=60, scope="_feedback")
    for start in range(0, 300, 100):
        writer.submit_all([label(i) for i in range(start, start + 100)]).result(10)
    print("written", flush=True)
    {after}
    """


def test_labels_acknowledged_before_a_sigkill_are_made_parquet_by_the_next_writer(tmp_path):
    child = _child(tmp_path, FEEDBACK_CHILD.format(after="os.kill(os.getpid(), signal.SIGKILL)"))
    _written(child)
    assert child.wait(10) == -signal.SIGKILL
    assert len(_streams(tmp_path)) == 1 and _rows(tmp_path) == []
    writer = _feedback_writer(tmp_path)
    assert writer.flush()  # the recovery at its start is done
    assert writer.stats.recovered == 300 and writer.stats.torn == 0
    assert sorted(r["inference_id"] for r in _rows(tmp_path)) == sorted(f"id-{i}" for i in range(300))
    assert _streams(tmp_path) == []
    writer.close()


def test_a_torn_last_batch_is_dropped_and_counted(tmp_path):
    child = _child(tmp_path, FEEDBACK_CHILD.format(after="os.kill(os.getpid(), signal.SIGKILL)"))
    _written(child)
    child.wait(10)
    (stream,) = _streams(tmp_path)
    whole = stream.read_bytes()
    with stream.open("ab") as f:  # a batch the process was writing when it died
        f.write(whole[len(whole) // 2 :][:300])
    writer = _feedback_writer(tmp_path)
    assert writer.flush()
    assert (writer.stats.recovered, writer.stats.torn) == (300, 1)
    assert len(_rows(tmp_path)) == 300
    writer.close()


def test_captures_flushed_before_a_sigkill_are_readable_parquet_after_the_next_start(tmp_path):
    child = _child(
        tmp_path,
        """
        writer = PartitionedWriter(root, CAPTURE_SCHEMA, capture_table, capture_partition, flush_s=0.1,
                                   scope="model=m")
        for i in range(50):
            writer.submit({"inference_id": f"id-{i}", "time": time.time(), "model": "m", "version": "1",
                           "role": "stable", "status": 200, "latency_ms": 1.0,
                           "inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "values": np.ones(2)}],
                           "outputs": None})
        time.sleep(0.5)  # more than flush_s
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    assert child.wait(30) == -signal.SIGKILL
    assert _rows(tmp_path) == []  # nothing but the in-progress stream yet
    writer = PartitionedWriter(tmp_path, CAPTURE_SCHEMA, capture_table, capture_partition, scope="model=m")
    assert writer.flush()
    assert sorted(r["inference_id"] for r in _rows(tmp_path)) == sorted(f"id-{i}" for i in range(50))
    writer.close()


def test_a_live_writers_stream_is_never_taken(tmp_path):
    child = _child(tmp_path, FEEDBACK_CHILD.format(after="time.sleep(600)"))
    try:
        _written(child)
        (stream,) = _streams(tmp_path)
        writer = _feedback_writer(tmp_path, recover_every_s=0.1)
        assert writer.flush()
        time.sleep(0.3)  # a few periodic recoveries too
        assert _streams(tmp_path) == [stream] and _rows(tmp_path) == []
        assert writer.stats.recovered == 0
    finally:
        child.kill()
        child.wait(10)
    deadline = time.monotonic() + 10  # its writer is dead now: the periodic recovery takes it
    while writer.stats.recovered < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_rows(tmp_path)) == 300 and _streams(tmp_path) == []
    writer.close()


def test_a_stream_converted_before_its_writer_died_is_not_converted_twice(tmp_path):
    child = _child(tmp_path, FEEDBACK_CHILD.format(after="os.kill(os.getpid(), signal.SIGKILL)"))
    _written(child)
    child.wait(10)
    (stream,) = _streams(tmp_path)
    copy = stream.with_name("copy")
    copy.write_bytes(stream.read_bytes())
    stream_to_parquet(stream, {}, durable=False)  # the writer converted it, then died before removing it
    copy.rename(stream)
    writer = _feedback_writer(tmp_path)
    writer.close()
    assert len(_rows(tmp_path)) == 300 and _streams(tmp_path) == []


def test_files_rotate_by_rows_and_every_file_a_reader_lists_is_complete(tmp_path):
    writer = _feedback_writer(tmp_path, rotate=Rotate(max_rows=100))
    for start in range(0, 250, 50):
        writer.submit_all([_label(i) for i in range(start, start + 50)]).result(10)
        assert len(_rows(tmp_path)) == start + 50 - (start + 50) % 100  # complete files only
    writer.close()
    assert sorted(pq.read_metadata(f).num_rows for f in tmp_path.rglob("*.parquet")) == [50, 100, 100]


def test_an_empty_in_progress_file_is_left_to_its_writer_unless_long_abandoned(tmp_path):
    directory = tmp_path / "_feedback" / "model=m" / "hour=2026-05-28T20"
    directory.mkdir(parents=True)
    fresh, abandoned = directory / f".fresh{IN_PROGRESS}", directory / f".abandoned{IN_PROGRESS}"
    fresh.touch()  # a writer between creating and locking it
    abandoned.touch()
    two_hours_ago = time.time() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    writer = _feedback_writer(tmp_path)
    assert writer.flush()
    writer.close()
    assert fresh.exists() and not abandoned.exists()
