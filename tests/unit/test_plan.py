import numpy as np
import pytest

from runtime.capacity.latency_profile import batch_seconds
from runtime.capacity.plan import HttpPath, Replica, plan, predict

# 2 ms a call plus 0.5 ms a row: batching pays.
PROFILE = {1: 0.0025, 2: 0.003, 4: 0.004, 8: 0.006, 16: 0.010}
HTTP = HttpPath(per_request_s=0.0002, floor_s=np.array([0.001]))


def test_max_sustainable_rate_grows_with_batching_and_replicas():
    one = Replica(PROFILE, HTTP, 1, 0.0).max_sustainable_rate(50, requests=4000)
    batched = Replica(PROFILE, HTTP, 16, 0.0).max_sustainable_rate(50, requests=4000)
    two = Replica(PROFILE, HTTP, 16, 0.0, replicas=2).max_sustainable_rate(50, requests=4000)
    assert one < 400 < batched  # one at a time tops out near 1 / 2.5 ms
    assert two > 1.5 * batched


def test_the_event_loop_caps_a_replica():
    slow_loop = HttpPath(per_request_s=0.002)  # 500 requests/s at most, whatever the batch
    replica = Replica(PROFILE, slow_loop, 16, 0.0)
    assert replica.capacity() == pytest.approx(500)
    assert replica.max_sustainable_rate(50, requests=4000) < 500


def test_a_slower_engine_in_the_server_lowers_capacity():
    slowed = HttpPath(per_request_s=0.0002, engine_slowdown=3.0)
    assert Replica(PROFILE, slowed, 16, 0.0).capacity() < Replica(PROFILE, HTTP, 16, 0.0).capacity() / 2


def test_plan_picks_the_fewest_replicas_meeting_the_slo():
    result = plan(PROFILE, rate=800, slo_p99_ms=50, http=HTTP, max_replicas=2, delays_ms=(0.0,), requests=2000)
    assert result["plan"]["replicas"] == 1 and result["plan"]["max_batch_size"] >= 4
    assert result["plan"]["p99_ms_at_rate"] <= 50
    assert [p["rps"] for p in result["curve"]] == sorted(p["rps"] for p in result["curve"])
    harder = plan(PROFILE, rate=2000, slo_p99_ms=50, http=HTTP, max_replicas=3, delays_ms=(0.0,), requests=2000)
    assert harder["plan"]["replicas"] >= 2


def test_an_impossible_slo_has_no_plan():
    http = HttpPath(per_request_s=0.002, floor_s=np.array([0.002]))
    assert plan(PROFILE, rate=100, slo_p99_ms=1.0, http=http, max_replicas=2, requests=2000)["plan"] is None


def test_predict_reports_the_p99_at_70_percent():
    result = predict(Replica(PROFILE, HTTP, 16, 2.0), slo_p99_ms=50)
    assert result["at_rps"] == pytest.approx(0.7 * result["max_rps"], abs=0.1)
    assert result["p99_ms"] < 50


def test_predict_an_slo_no_rate_meets():
    http = HttpPath(per_request_s=0.002, floor_s=np.array([0.060]))  # the HTTP path alone is above the SLO
    assert predict(Replica(PROFILE, http, 16, 2.0), slo_p99_ms=50) == {
        "max_rps": 0.0,
        "p99_ms": None,
        "at_rps": 0.0,
        "curve": [],
    }


def test_profile_points_feed_the_planner():
    report = {
        "opt_sizes": {"batch": 8, "seq": 128},
        "points": [
            {"batch": 1, "sizes": {"batch": 1, "seq": 128}, "median_ms": 2.0},
            {"batch": 1, "sizes": {"batch": 1, "seq": 16}, "median_ms": 0.5},
        ],
    }
    assert batch_seconds(report) == {1: pytest.approx(0.002)}


def test_engine_slowdown_follows_the_load_it_was_measured_at():
    http = HttpPath(0.0002, engine_slowdown=4.0, slowdowns=[(300.0, 1.5), (600.0, 2.5), (1200.0, 4.0)])
    assert http.slowdown_at(None) == 4.0  # saturation
    assert http.slowdown_at(450.0) == pytest.approx(2.0)
    assert http.slowdown_at(100.0) == 1.5 and http.slowdown_at(5000.0) == 4.0  # flat beyond the ends
    assert HttpPath(0.0002, engine_slowdown=3.0).slowdown_at(100.0) == 3.0


def test_stalls_are_interpolated_by_share_of_time_and_length():
    quarter = (250.0, 2.0, np.array([0.005, 0.007]))  # 2 a second of 6 ms: 1.2% of the time
    half = (500.0, 1.0, np.array([0.02, 0.02]))  # 1 a second of 20 ms: 2%
    http = HttpPath(0.0002, stalls=[half, quarter])
    per_s, lengths = http.stalls_at(250.0)
    assert per_s == pytest.approx(2.0) and lengths.mean() == pytest.approx(0.006)
    per_s, lengths = http.stalls_at(750.0)  # beyond: 2.8% of the time in stalls of 34 ms
    assert lengths.mean() == pytest.approx(0.034)
    assert per_s * lengths.mean() == pytest.approx(0.028)
    assert http.stalls_at(0.0)[0] >= 0
    assert HttpPath(0.0002).stalls_at(100.0)[0] == 0.0


def test_stalls_follow_three_runs_piecewise_and_a_run_without_any_counts_as_none():
    none = (250.0, 0.0, np.zeros(0))  # a quarter load found no stall
    half = (500.0, 1.0, np.array([0.01]))  # 1% of the time
    three_quarters = (750.0, 2.0, np.array([0.02, 0.02]))  # 4%: stalls grow faster near capacity
    http = HttpPath(0.0002, stalls=[three_quarters, none, half])
    assert http.stalls_at(250.0)[0] == 0.0
    per_s, lengths = http.stalls_at(375.0)  # half way to the first run with stalls: 0.5% of the time,
    assert per_s * lengths.mean() == pytest.approx(0.005)  # in stalls as long as the trend says
    assert lengths.mean() == pytest.approx(0.005)
    per_s, lengths = http.stalls_at(650.0)  # between the upper two: 2.8% in stalls of 16 ms
    assert per_s * lengths.mean() == pytest.approx(0.028) and lengths.mean() == pytest.approx(0.016)
    assert lengths == pytest.approx([0.016, 0.016])  # the nearest run's (750), scaled to the mean
    per_s, lengths = http.stalls_at(1000.0)  # beyond, along the last segment: 7% in stalls of 30 ms
    assert per_s * lengths.mean() == pytest.approx(0.07) and lengths.mean() == pytest.approx(0.03)
    assert HttpPath(0.0002, stalls=[none]).stalls_at(500.0)[0] == 0.0


def test_calibration_reports_stalls_and_slowdowns_as_plan_reads_them():
    doc = {
        "per_request_ms": 0.6,
        "per_call_ms": 0.9,
        "engine_slowdown": 4.0,
        "floor_samples_ms": [1.0, 2.0],
        "saturation": {"rps": 1400.0},
        "low_load": {"rate": 140.0, "engine_slowdown": 1.2},
        "stalls": [
            {"rate": 350.0, "per_s": 1.0, "lengths_ms": [8.0], "engine_slowdown": 1.5},
            {"rate": 700.0, "per_s": 1.2, "lengths_ms": [15.0, 17.0], "engine_slowdown": 2.0},
        ],
    }
    http = HttpPath.from_report(doc)
    assert sorted(http.slowdowns) == [(140.0, 1.2), (350.0, 1.5), (700.0, 2.0), (1400.0, 4.0)]
    assert http.slowdown_at(140.0) == pytest.approx(1.2)
    assert http.per_request_s == pytest.approx(0.0006) and http.per_call_s == pytest.approx(0.0009)
    assert http.stalls_at(700.0)[0] == pytest.approx(1.2)
    assert http.stalls_at(700.0)[1] == pytest.approx([0.015, 0.017])
    assert list(http.floor_s) == pytest.approx([0.001, 0.002])
