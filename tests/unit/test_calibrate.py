"""The pure parts of `benchmarks calibrate`: finding the event loop's stalls in an open-loop run, and
reading the server's /stats."""

import numpy as np
import pytest

from benchmarks.calibrate import _handoff_seconds, _loop_per_request, _variation, loop_seconds, pool, stalls
from benchmarks.plan import HttpPath


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


def _stats(calls: int, recent: list[tuple[int, int]] | None = None, input_ns=0, output_ns=0) -> dict:
    stats = {
        "execution_count": calls,
        "inference_stats": {"compute_input": {"ns": input_ns}, "compute_output": {"ns": output_ns}},
    }
    if recent is not None:
        stats["recent_engine_calls"] = {"rows": [r for r, _ in recent], "infer_us": [us for _, us in recent]}
    return stats


def test_engine_variation_is_each_calls_time_over_the_profiles_around_their_mean():
    engine = lambda rows, rng: 0.001 * rows  # noqa: E731 - 1 ms a row alone
    # Two calls before the run (not counted), three in it: 2x, 3x and 4x the profile.
    before = _stats(2, [(1, 5000), (1, 5000)])
    after = _stats(5, [(1, 5000), (1, 5000), (1, 2000), (2, 6000), (4, 16000)])
    assert _variation(before, after, engine) == pytest.approx([2 / 3, 1.0, 4 / 3], abs=1e-3)
    assert _variation(before, _stats(5), engine) == []  # a server that does not list its calls


def test_handoff_is_the_loops_share_of_an_engine_call():
    before = _stats(10, input_ns=1_000_000, output_ns=2_000_000)
    after = _stats(14, input_ns=1_400_000, output_ns=3_200_000)
    assert _handoff_seconds(before, after) == pytest.approx((0.4e6 + 1.2e6) / 4 / 1e9)
    assert _handoff_seconds(before, before) == 0.0


def _report(per_request_ms, floor_ms, stall_lengths, span_s=10.0, loop_ms=None):
    """A calibration report as `calibrate` writes it, with the figures pool reads."""
    stall_runs = [
        {
            "rate": rate,
            "p50_ms": 3.0,
            "p99_ms": per_request_ms * 10,
            "per_s": len(lengths) / span_s,
            "span_s": span_s,
            "lengths_ms": lengths,
            "rows_per_engine_call": 1.5,
            "engine_slowdown": 2.0 + i,
            "engine_variation": [1.0],
            "event_loop_ms_per_request": loop_ms,
        }
        for i, (rate, lengths) in enumerate(zip((100.0, 200.0), stall_lengths, strict=True))
    ]
    return {
        "model": "m",
        "saturation": {
            "rps": 1e3 / per_request_ms,
            "rows_per_engine_call": 8.0,
            "engine_ms_per_call_served": 4.0,
            "engine_busy": 0.3,
            "engine_variation": [1.0],
        },
        "low_load": {
            "rate": 50.0,
            "p50_ms": 3.0,
            "p99_ms": 6.0,
            "handler_ms": 1.0,
            "rows_per_engine_call": 1.0,
            "engine_slowdown": 2.5,
        },
        "per_request_ms": per_request_ms,
        "per_request_by_rate": [[100.0, loop_ms], [200.0, loop_ms]] if loop_ms else [],
        "engine_bound": bool(loop_ms),
        "decode_ms": 0.1,
        "encode_ms": 0.1,
        "per_call_ms": 0.5,
        "engine_slowdown": 3.0,
        "floor_samples_ms": floor_ms,
        "floor_p50_ms": float(np.median(floor_ms)),
        "floor_p99_ms": float(np.percentile(floor_ms, 99)),
        "stalls": stall_runs,
    }


def test_pooled_calibrations_average_the_figures_and_keep_every_sample():
    first = _report(1.0, [1.0, 1.0], [[5.0], []])
    second = _report(2.0, [3.0, 3.0, 3.0], [[7.0, 9.0], []])
    pooled = pool([first, second])
    assert pooled["pooled"] == 2
    assert pooled["per_request_ms"] == pytest.approx(1.5)
    assert pooled["saturation"]["rps"] == pytest.approx(750.0)
    assert pooled["floor_samples_ms"] == [1.0, 1.0, 3.0, 3.0, 3.0] and pooled["floor_p50_ms"] == 3.0
    # Stalls: each load's runs together, counted over their time together (3 in 20 s; none in 20 s).
    low, high = pooled["stalls"]
    assert low["lengths_ms"] == [5.0, 7.0, 9.0] and low["per_s"] == pytest.approx(0.15) and low["span_s"] == 20.0
    assert high["lengths_ms"] == [] and high["per_s"] == 0.0
    assert (low["engine_slowdown"], high["engine_slowdown"]) == (2.0, 3.0)
    assert low["p99_ms"] == pytest.approx(15.0) and "outside_handler_ms" not in low  # neither report has it
    # What plan reads of it.
    http = HttpPath.from_report(pooled)
    assert http.per_request_s == pytest.approx(1.5e-3)
    assert http.stalls_at(100.0)[0] == pytest.approx(0.15)
    assert pool([first]) is first


def test_pooled_engine_bound_calibrations_average_the_loops_cost_by_rate():
    pooled = pool([_report(1.0, [1.0], [[], []], loop_ms=1.2), _report(1.0, [1.0], [[], []], loop_ms=1.6)])
    assert pooled["engine_bound"]
    assert pooled["per_request_by_rate"] == [[100.0, 1.4], [200.0, 1.4]]
    assert [s["event_loop_ms_per_request"] for s in pooled["stalls"]] == [1.4, 1.4]
    assert HttpPath.from_report(pooled).per_request_at(150.0) == pytest.approx(1.4e-3)


def test_the_loops_waits_for_a_cpu_count_as_often_as_work_is_queued_behind_them():
    # 1 ms on a CPU and 1 ms waiting for one a request: taken 2 ms a request in all.
    assert loop_seconds(1e-3, 1e-3, 0.0) == pytest.approx(1e-3)  # idle: a wait delays only what woke it
    assert loop_seconds(1e-3, 1e-3, 250.0) == pytest.approx(1.5e-3)  # taken half the time
    assert loop_seconds(1e-3, 1e-3, 1000.0) == pytest.approx(2e-3)  # always busy: every wait holds work up
    assert loop_seconds(1e-3, 0.0, 1000.0) == pytest.approx(1e-3)


def test_loop_figures_from_stats():
    def stats(requests, cpu_ns, wait_ns=None):
        doc = {"inference_stats": {"success": {"count": requests}}, "event_loop_cpu_ns": cpu_ns}
        return doc if wait_ns is None else {**doc, "event_loop_wait_ns": wait_ns}

    cpu, wait, loop = _loop_per_request(stats(100, 0, 0), stats(300, 200_000_000, 100_000_000), 400.0)
    assert (cpu, wait) == pytest.approx((1e-3, 0.5e-3))
    assert loop == pytest.approx(1e-3 + 0.5e-3 * 0.6)
    assert _loop_per_request(stats(100, 0), stats(300, 200_000_000), 400.0) is None  # no wait reported


def test_a_pool_mostly_not_engine_bound_takes_the_loops_cost_from_the_throughput():
    reports = [_report(1.0, [1.0], [[], []], loop_ms=1.2), _report(1.0, [1.0], [[], []]), _report(1.0, [1.0], [[], []])]
    pooled = pool(reports)
    assert not pooled["engine_bound"] and pooled["per_request_by_rate"] == []
    assert HttpPath.from_report(pooled).per_request_at(150.0) == pytest.approx(1e-3)
