"""The pure parts of `benchmarks calibrate`: finding the event loop's stalls in an open-loop run."""

import numpy as np
import pytest

from benchmarks.calibrate import stalls


def test_a_burst_of_slow_requests_is_one_stall_as_long_as_its_worst_excess():
    scheduled = np.arange(0.0, 10.0, 0.002)  # 500 req/s
    latencies = np.full(len(scheduled), 3.0)
    # A 25 ms stall at t=2 s: requests sent during it wait out the rest of it.
    hit = (scheduled >= 2.0) & (scheduled < 2.025)
    latencies[hit] += 25.0 - (scheduled[hit] - 2.0) * 1e3
    # A 12 ms one at t=7 s.
    hit = (scheduled >= 7.0) & (scheduled < 7.012)
    latencies[hit] += 12.0 - (scheduled[hit] - 7.0) * 1e3
    found = stalls(scheduled, latencies)
    assert found == pytest.approx([25.0, 12.0], abs=0.01)


def test_waiting_for_an_engine_call_or_two_is_not_a_stall():
    scheduled = np.arange(0.0, 10.0, 0.01)
    latencies = np.full(len(scheduled), 10.0)
    latencies[::50] = 45.0  # 35 ms over the median: a stall for a fast engine, queueing for a 20 ms one
    assert len(stalls(scheduled, latencies)) == 20
    assert stalls(scheduled, latencies, engine_ms=20.0) == []
    assert stalls(scheduled, np.full(len(scheduled), 10.0)) == []
