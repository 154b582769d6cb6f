"""One analysis interval: each gate, too few requests, p99 relative to stable's."""

import pytest

from runtime.rollout.analysis import Agreement, Thresholds, VersionWindow, judge

LIMITS = Thresholds()
STABLE = VersionWindow(requests=1000, server_errors=0, p99_ms=20.0)
AGREE = Agreement(compared=500, agreed=500)


def test_a_healthy_candidate_passes():
    verdict = judge(VersionWindow(200, 0, 22.0), STABLE, AGREE, LIMITS)
    assert verdict.outcome == "pass" and verdict.reasons == []
    assert verdict.figures["candidate"]["p99_ms"] == 22.0 and verdict.figures["agreement"] == 1.0


def test_too_few_requests_extend_the_interval():
    verdict = judge(VersionWindow(99, 50, 500.0), STABLE, AGREE, LIMITS)  # however bad: too few to tell
    assert verdict.outcome == "extend" and "99 candidate requests, 100 needed" in verdict.reasons[0]


def test_no_compared_outputs_extend_the_interval():
    assert judge(VersionWindow(200, 0, 20.0), STABLE, Agreement(), LIMITS).outcome == "extend"


def test_errors_above_the_absolute_bound_fail():
    verdict = judge(VersionWindow(200, 3, 20.0), STABLE, AGREE, LIMITS)
    assert verdict.outcome == "fail" and "error ratio 1.50% above 1.00%" in verdict.reasons[0]


def test_errors_relative_to_stable():
    stable = VersionWindow(1000, 2, 20.0)  # 0.2 %
    assert judge(VersionWindow(1000, 5, 20.0), stable, AGREE, LIMITS).outcome == "fail"  # 0.5 % > 2x 0.2 %
    assert judge(VersionWindow(1000, 3, 20.0), stable, AGREE, LIMITS).outcome == "pass"  # 0.3 %
    clean = VersionWindow(1000, 0, 20.0)
    assert judge(VersionWindow(1000, 1, 20.0), clean, AGREE, LIMITS).outcome == "pass"  # 0.1 %: noise


def test_p99_relative_to_stable_and_absolute():
    verdict = judge(VersionWindow(200, 0, 31.0), STABLE, AGREE, LIMITS)
    assert verdict.outcome == "fail" and "p99 31.0 ms above 1.5x stable's 20.0 ms" in verdict.reasons[0]
    assert judge(VersionWindow(200, 0, 29.0), STABLE, AGREE, LIMITS).outcome == "pass"
    tight = Thresholds(max_p99_ms=25)
    verdict = judge(VersionWindow(200, 0, 29.0), STABLE, AGREE, tight)
    assert verdict.outcome == "fail" and "above 25 ms" in verdict.reasons[0]


def test_p99_differences_within_the_slack_are_noise():
    fast = VersionWindow(1000, 0, 1.1)
    assert judge(VersionWindow(200, 0, 1.9), fast, AGREE, LIMITS).outcome == "pass"  # 1.7x, but 0.8 ms
    assert judge(VersionWindow(200, 0, 3.5), fast, AGREE, LIMITS).outcome == "fail"  # 3.2x and 2.4 ms


def test_disagreeing_outputs_fail():
    verdict = judge(VersionWindow(200, 0, 20.0), STABLE, Agreement(500, 480), LIMITS)
    assert verdict.outcome == "fail" and "agree on 96.00% of 500 compared, below 99.00%" in verdict.reasons[0]


def test_every_failed_gate_is_named():
    verdict = judge(VersionWindow(200, 10, 90.0), STABLE, Agreement(100, 50), LIMITS)
    assert len(verdict.reasons) == 3


@pytest.mark.parametrize("bad", [{"max_error_ratio": 2}, {"min_requests": 0}, {"typo": 1}])
def test_thresholds_are_validated(bad):
    with pytest.raises(ValueError):
        Thresholds(**bad)
