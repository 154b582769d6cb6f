import pytest

from benchmarks.plan import max_sustainable_rate, plan
from benchmarks.profile import batch_seconds
from benchmarks.simulate import profile_service_time

# 2 ms a call plus 0.5 ms a row: batching pays.
PROFILE = {1: 0.0025, 2: 0.003, 4: 0.004, 8: 0.006, 16: 0.010}


def test_max_sustainable_rate_grows_with_batching_and_replicas():
    service = profile_service_time(PROFILE)
    one = max_sustainable_rate(service, 1, 1, slo_ms=50, overhead_s=0.001)
    batched = max_sustainable_rate(service, 16, 1, slo_ms=50, overhead_s=0.001)
    two = max_sustainable_rate(service, 16, 2, slo_ms=50, overhead_s=0.001)
    assert one < 400 < batched  # one at a time tops out near 1 / 2.5 ms
    assert two > 1.5 * batched


def test_plan_picks_the_fewest_replicas_meeting_the_slo():
    result = plan(PROFILE, rate=800, slo_p99_ms=50, http_overhead_ms=0.2, max_replicas=2, requests=2000)
    assert result["plan"]["replicas"] == 1 and result["plan"]["max_batch_size"] >= 4
    assert result["plan"]["p99_ms_at_rate"] <= 50
    assert [p["rps"] for p in result["curve"]] == sorted(p["rps"] for p in result["curve"])
    harder = plan(PROFILE, rate=2000, slo_p99_ms=50, http_overhead_ms=0.2, max_replicas=3, requests=2000)
    assert harder["plan"]["replicas"] >= 2


def test_an_impossible_slo_has_no_plan():
    assert plan(PROFILE, rate=100, slo_p99_ms=1.0, http_overhead_ms=2.0, max_replicas=2, requests=2000)["plan"] is None


def test_profile_points_feed_the_planner():
    report = {
        "opt_sizes": {"batch": 8, "seq": 128},
        "points": [
            {"batch": 1, "sizes": {"batch": 1, "seq": 128}, "median_ms": 2.0},
            {"batch": 1, "sizes": {"batch": 1, "seq": 16}, "median_ms": 0.5},
        ],
    }
    assert batch_seconds(report) == {1: pytest.approx(0.002)}
