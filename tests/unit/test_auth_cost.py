"""How the auth-cost benchmark judges its target: a distribution-free interval for the median pair ratio,
and the check's share of the replica's CPU as the bound."""

from __future__ import annotations

import pytest

from benchmarks.reliability import auth_cost_met, median_interval


def test_the_median_interval_of_16_pairs_is_the_4th_to_the_13th():
    values = [float(v) for v in range(16, 0, -1)]
    assert median_interval(values) == (4.0, 13.0)


def test_too_few_pairs_for_95_percent_are_refused_not_mislabelled():
    with pytest.raises(ValueError, match="5 values give no 95% interval"):
        median_interval([3.0, 1.0, 2.0, 5.0, 4.0])  # their whole range covers 93.75 %
    assert median_interval([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]) == (1.0, 6.0)  # 96.9 %


@pytest.mark.parametrize(
    ("share", "interval", "met"),
    [
        (0.004, [0.90, 1.05], True),  # a small bound, and the end-to-end interval reaches the target
        (0.004, [0.85, 0.95], False),  # the end-to-end measurement says it costs more than 3 %
        (0.05, [0.95, 1.05], False),  # the check itself takes more than 3 % of the CPU per request
        (None, None, False),  # a run that did not time the check
    ],
)
def test_the_target_needs_the_bound_and_no_contradiction(share, interval, met):
    cost = {"check_share_of_replica_cpu": share, "throughput_ratio_interval_95": interval}
    assert auth_cost_met(cost) is met
