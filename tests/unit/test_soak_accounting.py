"""The soak's accounting: CPU by process group per minute (running totals interpolated at the minute marks),
and the p99 trend that tells a replica slowing with age from a noisy machine."""

from __future__ import annotations

import pytest

from benchmarks.soak import _trend, cpu_by_minute, cpu_group


def test_cpu_per_minute_comes_from_running_totals_at_the_minute_marks():
    # One group at 0.5 CPU-s per second, sampled every 25 s: the samples straddle the minute marks.
    samples = [(t, {"replica": 0.5 * t}) for t in (0.0, 25.0, 50.0, 75.0, 100.0, 125.0)]
    assert cpu_by_minute(samples, 2) == {"replica": [30.0, 30.0]}


def test_a_group_that_appears_later_counts_from_zero():
    samples = [(0.0, {}), (30.0, {"generator": 3.0}), (60.0, {"generator": 6.0, "haproxy": 1.0})]
    assert cpu_by_minute(samples, 1) == {"generator": [6.0], "haproxy": [1.0]}


@pytest.mark.parametrize(
    ("cmdline", "group"),
    [
        (["ray::ServeReplica:soak:trtserve"], "replica"),
        (["/usr/sbin/haproxy", "-db", "-f", "x.cfg"], "haproxy"),
        (["ray::ServeController.listen_for_change"], "serve"),
        (["/venv/bin/python", "-u", "/venv/lib/ray/dashboard/dashboard.py", "--host=127.0.0.1"], "ray dashboard.py"),
        (["/venv/lib/ray/core/src/ray/gcs/gcs_server", "--port=1"], "ray gcs_server"),
        ([], "ray other"),
    ],
)
def test_processes_are_grouped_by_what_they_are(cmdline, group):
    assert cpu_group(cmdline) == group


def test_the_trend_is_the_slope_as_a_share_of_the_mean():
    assert _trend([100.0, 110.0, 120.0, 130.0]) == pytest.approx(10 / 115, abs=1e-4)
    assert _trend([80.0, 120.0, 80.0, 120.0, 80.0]) == pytest.approx(0.0, abs=1e-4)
    assert _trend([1.0, 2.0]) is None
