"""Per-version counts that add up across replicas: server errors, and a p99 within one 5 % bucket."""

import numpy as np
import pytest

from runtime.rollout.window import VersionCounts


def counts(latencies_ms, statuses=None) -> VersionCounts:
    c = VersionCounts()
    for i, ms in enumerate(latencies_ms):
        c.observe(statuses[i] if statuses else 200, ms)
    return c


def test_p99_within_a_bucket_of_the_exact_figure():
    latencies = np.random.default_rng(0).lognormal(mean=3, sigma=0.5, size=20_000)
    exact = float(np.percentile(latencies, 99))
    got = counts(latencies).percentile_ms(99)
    assert exact <= got <= exact * 1.06


def test_server_errors_are_5xx_only():
    c = counts([1, 1, 1, 1], [200, 400, 503, 500])
    assert (c.requests, c.server_errors) == (4, 2) and c.window().error_ratio == 0.5


def test_replicas_add_up_and_intervals_subtract():
    a, b = counts([10] * 90), counts([100] * 10)
    total = a.plus(b)
    assert total.requests == 100 and total.percentile_ms(99) == pytest.approx(100, rel=0.06)
    snapshot = VersionCounts.from_json(total.to_json())
    later = total.plus(counts([1000] * 100))
    interval = later.since(snapshot)
    assert interval.requests == 100 and interval.percentile_ms(50) == pytest.approx(1000, rel=0.06)


def test_nothing_counted_has_no_p99():
    assert VersionCounts().percentile_ms(99) is None and VersionCounts().window().requests == 0
