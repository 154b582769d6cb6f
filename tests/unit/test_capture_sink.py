"""A model's capture sink without Ray: feedback is acknowledged only once fsynced, concurrent POSTs share
fsyncs, the event loop never waits on the disk, and what cannot be written is a 503, never a 200."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow.dataset as ds
import pytest

import runtime.monitor.capture_writer as capture_writer
import runtime.serve.capture_sink as capture
from runtime.monitor.capture_writer import IN_PROGRESS
from runtime.monitor.quality_report import read_feedback
from runtime.serve.app_args import Capture
from runtime.serve.capture_sink import (
    MAX_FEEDBACK_ENTRIES,
    CaptureError,
    CaptureSink,
    FeedbackError,
    FeedbackUnavailable,
)

ROOT = Path(__file__).resolve().parents[2]
KEY = b"deployment-secret-0123456789abcdef"


def _sink(tmp_path, **settings) -> CaptureSink:
    return CaptureSink("m", Capture(destination=str(tmp_path), flush_s=0.05, **settings), KEY)


def _label(i: int) -> dict:
    return {"id": f"id-{i}", "label": i % 3}


class SlowFsync:
    """os.fsync that takes `seconds` (a disk under load) and counts its calls."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls, self.real = seconds, 0, os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        time.sleep(self.seconds)
        self.real(fd)


def test_concurrent_posts_share_fsyncs_and_each_returns_after_its_labels_are_synced(tmp_path, monkeypatch):
    sink = _sink(tmp_path)
    asyncio.run(sink.add_feedback(_label(-1)))  # the stream and its directory exist: what follows is steady
    fsync = SlowFsync(0.2)
    monkeypatch.setattr(capture_writer.os, "fsync", fsync)

    async def post(i: int) -> tuple[int, int]:
        synced_before = fsync.calls
        await sink.add_feedback([_label(i), _label(i + 100)])
        return synced_before, fsync.calls

    async def posts():
        return await asyncio.gather(*(post(i) for i in range(20)))

    results = asyncio.run(posts())
    assert all(after > before for before, after in results)  # none answered before an fsync after it came
    assert fsync.calls <= 4  # 20 POSTs: group commit, not 20 fsyncs of 0.2 s
    sink.close()
    assert len(read_feedback(tmp_path, "m")) == 41


def test_the_event_loop_keeps_running_while_labels_are_synced(tmp_path, monkeypatch):
    sink = _sink(tmp_path)
    asyncio.run(sink.add_feedback(_label(-1)))
    release = threading.Event()
    real = os.fsync

    def stuck(fd):  # a disk that takes its time
        release.wait(10)
        real(fd)

    monkeypatch.setattr(capture_writer.os, "fsync", stuck)

    async def scenario():
        post = asyncio.ensure_future(sink.add_feedback(_label(0)))
        ticks = 0
        for _ in range(20):
            await asyncio.sleep(0.01)
            ticks += 1
        assert not post.done()  # not acknowledged while its fsync has not returned
        release.set()
        assert await asyncio.wait_for(post, 10) == 1
        return ticks

    assert asyncio.run(scenario()) == 20  # the loop ticked all along
    sink.close()


def test_labels_that_cannot_be_synced_are_a_503_and_the_next_post_succeeds(tmp_path, monkeypatch):
    sink = _sink(tmp_path)
    asyncio.run(sink.add_feedback(_label(-1)))
    real = os.fsync
    broken = {"on": True}

    def fsync(fd):
        if broken["on"]:
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(capture_writer.os, "fsync", fsync)
    with pytest.raises(FeedbackUnavailable, match=r"could not be written to disk; retry later$"):
        asyncio.run(sink.add_feedback(_label(0)))
    broken["on"] = False
    assert asyncio.run(sink.add_feedback(_label(1))) == 1
    assert sink.feedback.stats.failed == 1
    sink.close()


def test_a_dead_feedback_writer_is_a_503_not_a_200_and_the_health_check_is_told(tmp_path, monkeypatch):
    sink = _sink(tmp_path)
    assert sink.problem() is None
    dead = threading.Event()

    def broken():  # a bug in the writer's thread, outside every per-record guard
        dead.set()
        raise RuntimeError("a bug")

    monkeypatch.setattr(sink.feedback, "_take", broken)
    assert dead.wait(10)
    sink.feedback._thread.join(10)
    with pytest.raises(FeedbackUnavailable, match="its writer stopped"):
        asyncio.run(sink.add_feedback(_label(0)))
    assert (
        sink.problem() == f"the feedback-m writer under {tmp_path} stopped (RuntimeError; its traceback is in the log)"
    )


def test_a_full_feedback_queue_is_a_503(tmp_path, monkeypatch):
    sink = _sink(tmp_path)
    asyncio.run(sink.add_feedback(_label(-1)))
    release = threading.Event()
    real = os.fsync

    def stuck(fd):  # the writer holds the first POST's labels until released
        release.wait(10)
        real(fd)

    monkeypatch.setattr(capture_writer.os, "fsync", stuck)

    async def scenario():
        first = asyncio.ensure_future(sink.add_feedback(_label(0)))
        while not sink.feedback._taken:
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(sink.add_feedback([_label(i) for i in range(MAX_FEEDBACK_ENTRIES)]))
        while not sink.feedback._queue:
            await asyncio.sleep(0.01)
        with pytest.raises(FeedbackUnavailable, match="queue is full"):
            await sink.add_feedback(_label(1))  # 10,000 rows queued: no room for one more now
        release.set()
        return await first, await second

    assert asyncio.run(scenario()) == (1, MAX_FEEDBACK_ENTRIES)
    sink.close()


def test_a_post_larger_than_queue_max_rows_is_taken(tmp_path):
    """The bug of before: the feedback queue had the captures' queue_max_rows, so a valid POST of more labels
    was told to retry later, forever."""
    sink = _sink(tmp_path, queue_max_rows=1000)
    assert asyncio.run(sink.add_feedback([_label(i) for i in range(5000)])) == 5000
    sink.close()
    assert len(read_feedback(tmp_path, "m")) == 5000


def test_a_post_larger_than_the_whole_feedback_queue_is_a_400_not_a_503(tmp_path):
    sink = _sink(tmp_path, queue_max_bytes=1 << 20)
    labels = [{"id": f"id-{i}", "label": [0.5] * 100} for i in range(1000)]  # 100,000 floats: about 4 MiB held
    with pytest.raises(
        FeedbackError,
        match=r"1000 labels take about \d+\.\d MiB once parsed, more than the feedback "
        r"queue holds \(1\.0 MiB, capture\.queue_max_bytes\): send fewer or shorter labels",
    ):
        asyncio.run(sink.add_feedback(labels))
    sink.close()


def test_one_post_is_one_partition_whatever_hours_its_labels_carry(tmp_path):
    """The bug of before: partitioned by each label's own hour, one POST of labels of 10,000 hours (any from
    2000 on was accepted) opened 10,000 locked files, held for minutes."""
    sink = _sink(tmp_path)
    hours = [946_684_800.0 + 3600 * 24 * 7 * k for k in range(50)]  # a label a week from 2000 on
    labels = [{"id": f"id-{k}", "label": 1, "time": t} for k, t in enumerate(hours)]
    before = time.time()
    assert asyncio.run(sink.add_feedback(labels)) == 50
    after = time.time()
    (stream,) = (tmp_path / "_feedback").rglob(f".*{IN_PROGRESS}")  # one partition, one open file
    assert stream.parent.name in {f"hour={capture_writer.hour_of(t)}" for t in (before, after)}
    sink.close()
    rows = ds.dataset(tmp_path / "_feedback", format="parquet").to_table().to_pylist()
    assert sorted(r["time"].timestamp() for r in rows) == hours  # each label keeps its own time
    assert all(before - 1 <= r["received"].timestamp() <= after + 1 for r in rows)


def test_feedback_is_parsed_and_sized_off_the_event_loop(tmp_path, monkeypatch):
    sink = _sink(tmp_path)
    loop_threads, real_loads, real_estimate = set(), orjson.loads, capture_writer.estimate_bytes
    on_the_loop = []

    def watched(real):
        def call(*args):
            on_the_loop.append(threading.current_thread() in loop_threads)
            return real(*args)

        return call

    monkeypatch.setattr(orjson, "loads", watched(real_loads))
    monkeypatch.setattr(capture_writer, "estimate_bytes", watched(real_estimate))
    monkeypatch.setattr(capture, "estimate_bytes", watched(real_estimate), raising=False)

    async def post(body):
        loop_threads.add(threading.current_thread())
        return await sink.add_feedback(body)

    assert asyncio.run(post([_label(i) for i in range(100)])) == 100  # a document already parsed
    assert on_the_loop and not any(on_the_loop)
    assert asyncio.run(post(orjson.dumps([_label(i) for i in range(100, 200)]))) == 100  # the request's bytes
    assert asyncio.run(post(memoryview(orjson.dumps(_label(200))))) == 1
    assert on_the_loop and not any(on_the_loop)
    with pytest.raises(FeedbackError, match=r"^malformed JSON: unexpected character"):
        asyncio.run(post(b'{"id": "a", label: 1}'))
    sink.close()
    assert len(read_feedback(tmp_path, "m")) == 201


def test_labels_acknowledged_right_before_a_sigkill_reach_parquet_at_the_next_start(tmp_path):
    """The replica answers 200 and is killed at once: the next sink on the destination makes them Parquet."""
    script = textwrap.dedent(
        """
        import asyncio, os, signal, sys
        from runtime.serve.capture_sink import CaptureSink
        from runtime.serve.app_args import Capture
        sink = CaptureSink("m", Capture(destination=sys.argv[1]), b"k")
        asyncio.run(sink.add_feedback([{"id": f"id-{i}", "label": 1} for i in range(500)]))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    child = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert read_feedback(tmp_path, "m") == {}  # only the in-progress stream so far
    sink = _sink(tmp_path)
    assert sink.feedback.flush()
    assert sorted(read_feedback(tmp_path, "m")) == sorted(f"id-{i}" for i in range(500))
    sink.close()


def test_a_models_writer_recovers_its_own_files_only(tmp_path):
    script = textwrap.dedent(
        """
        import asyncio, os, signal, sys
        from runtime.serve.capture_sink import CaptureSink
        from runtime.serve.app_args import Capture
        sink = CaptureSink("other", Capture(destination=sys.argv[1]), b"k")
        asyncio.run(sink.add_feedback({"id": "a", "label": 1}))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, timeout=60).returncode < 0
    sink = _sink(tmp_path)
    assert sink.feedback.flush()
    assert read_feedback(tmp_path, "other") == {}  # another model's files: its writer's schema and options
    sink.close()
    other = CaptureSink("other", Capture(destination=str(tmp_path), flush_s=0.05), KEY)
    assert other.feedback.flush()
    assert {i: list(v) for i, v in read_feedback(tmp_path, "other").items()} == {"a": [1.0]}
    other.close()


def test_sampling_needs_a_key(tmp_path):
    with pytest.raises(CaptureError, match=r"m: capture sampling needs a secret key of 1 to 64 bytes, got 0"):
        CaptureSink("m", Capture(destination=str(tmp_path), sampling_percent=10), b"")


def test_captures_reach_readable_parquet_files_and_only_those_are_listed(tmp_path):
    sink = _sink(tmp_path, sampling_percent=100)
    for i in range(5):
        sink.record(f"r{i}", "1", "stable", 200, 0.01, {"x": np.ones((1, 2))}, {"y": np.ones((1, 1))})
    assert sink.records.flush()
    assert ds.dataset(tmp_path, format="parquet").count_rows() == 0  # in progress: hidden from readers
    sink.close()
    assert ds.dataset(tmp_path, format="parquet").count_rows() == 5
