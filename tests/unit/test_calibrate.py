"""The pure parts of `trtserve capacity calibrate`: finding the event loop's stalls in an open-loop run, and
reading the server's /stats."""

import numpy as np
import pytest

from runtime.capacity.calibrate import engine_calls, handler_seconds, stalls


def test_a_stall_is_the_answering_time_lost_while_requests_waited():
    scheduled = np.arange(0.0, 10.0, 0.002)  # 500 req/s, each answered 3 ms later
    completed = scheduled + 0.003
    # A 25 ms stall at t=2 s and a 12 ms one at t=7 s: nothing is answered during them, and what was
    # due is answered when they end, one after the other.
    for start, length in ((2.0, 0.025), (7.0, 0.012)):
        hit = (completed > start) & (completed < start + length)
        completed[hit] = start + length + 0.0001 * np.arange(hit.sum())
    # The first request caught waited 27 ms (its 3 and the 24 left of the stall when it came).
    assert stalls(scheduled, completed) == pytest.approx([24.0, 11.0], abs=0.01)


def test_a_slowed_loop_loses_part_of_the_time():
    # 500 req/s, 1 ms of service each, answered 3 ms after being sent; for 30 ms from t=2 s the replica
    # serves at a quarter of its speed (4 ms each), and catches up after.
    scheduled = np.arange(0.0, 10.0, 0.002)
    completed = np.zeros(len(scheduled))
    free = 0.0
    for i, s in enumerate(scheduled):
        start = max(s + 0.002, free)
        free = start + (0.004 if 2.0 <= start < 2.03 else 0.001)
        completed[i] = free
    (lost,) = stalls(scheduled, completed)
    worst = float(((completed - scheduled) * 1e3).max())
    assert 3.0 < lost < worst - 3.0  # not all of the worst wait: answers kept coming, slower


def test_queueing_behind_engine_calls_is_not_a_stall():
    # An engine-bound replica near capacity: answers come 20 ms apart, 5 at a time; most requests took
    # 12 ms, every 50th waited 60 ms in the queue (over 3 x the median and 2 engine calls past it: slow
    # requests), but answers kept coming as fast as requests arrived, so there was no stall.
    completed = np.repeat(np.arange(1, 501) * 0.02, 5) + np.tile(np.arange(5) * 1e-4, 500)
    latencies = np.where(np.arange(len(completed)) % 50 == 25, 0.060, 0.012)
    scheduled = completed - latencies
    assert latencies.max() * 1e3 > max(3 * 12.0, 12.0 + 2 * 20.0)
    assert stalls(scheduled, completed, engine_ms=20.0) == []


def test_waiting_for_an_engine_call_or_two_is_not_a_stall():
    scheduled = np.arange(0.0, 10.0, 0.5)  # 2 req/s: the replica idle in between, answers 10 ms later
    completed = scheduled + 0.010
    completed[::4] += 0.035  # 35 ms late, nothing else answered meanwhile
    assert stalls(scheduled, completed) == pytest.approx([35.0] * 5)
    assert stalls(scheduled, completed, engine_ms=20.0) == []  # two 20 ms engine calls' worth: queueing
    assert stalls(scheduled, scheduled + 0.010) == []


def _stats(calls: int, rows: int, infer_ns: int, success: int = 0, success_ns: int = 0) -> dict:
    return {
        "execution_count": calls,
        "inference_count": rows,
        "inference_stats": {"compute_infer": {"ns": infer_ns}, "success": {"count": success, "ns": success_ns}},
    }


def test_engine_calls_and_handler_time_between_two_readings():
    before = _stats(10, 30, 20_000_000, success=30, success_ns=90_000_000)
    after = _stats(14, 50, 28_000_000, success=50, success_ns=150_000_000)
    assert engine_calls(before, after) == pytest.approx((5.0, 0.002))  # 20 rows in 4 calls of 2 ms
    assert handler_seconds(before, after) == pytest.approx(0.003)
    assert np.isnan(engine_calls(before, before)[0]) and handler_seconds(before, before) is None
