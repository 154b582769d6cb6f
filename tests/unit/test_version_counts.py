"""Per-version counts that add up across replicas: server errors, and a p99 within one 5 % bucket."""

import numpy as np
import pytest

from runtime.rollout import version_counts
from runtime.rollout.version_counts import VersionCounts


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


def test_server_errors_are_5xx_only_and_client_errors_are_not_judged():
    c = counts([1, 1, 1, 1, 1], [200, 400, 503, 500, 404])
    assert (c.requests, c.server_errors, c.client_errors) == (3, 2, 2)
    assert c.window().error_ratio == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("status", "judged", "server_error"),
    [
        (200, True, False),
        (400, False, False),
        (413, False, False),
        (499, False, False),
        (500, True, True),
        (503, True, True),
        (504, True, True),
    ],
)
def test_what_a_rollout_judges(status, judged, server_error):
    assert version_counts.judged(status) is judged and version_counts.server_error(status) is server_error


def test_client_errors_add_nothing_to_the_latency():
    c = counts([5] * 99 + [10_000] * 50, [200] * 99 + [400] * 50)  # slow refusals
    assert c.requests == 99 and c.percentile_ms(99) == pytest.approx(5, rel=0.06)


def test_reports_without_client_errors_still_read():
    doc = counts([1, 1]).to_json()
    del doc["client_errors"]  # a replica started before they were counted apart
    assert VersionCounts.from_json(doc) == counts([1, 1])


def test_replicas_add_up_and_intervals_subtract():
    a, b = counts([10] * 90), counts([100] * 10)
    total = a.plus(b)
    assert total.requests == 100 and total.percentile_ms(99) == pytest.approx(100, rel=0.06)
    snapshot = VersionCounts.from_json(total.to_json())
    later = total.plus(counts([1000] * 100)).plus(counts([1] * 3, [400] * 3))
    interval = later.since(snapshot)
    assert interval.requests == 100 and interval.percentile_ms(50) == pytest.approx(1000, rel=0.06)
    assert interval.client_errors == 3


def test_nothing_counted_has_no_p99():
    assert VersionCounts().percentile_ms(99) is None and VersionCounts().window().requests == 0
