"""An interval's figures added up over replicas' cumulative reports."""

from runtime.rollout.intervals import interval_figures
from runtime.rollout.version_counts import VersionCounts


def report(stable_ms, candidate_ms, compared=0, agreed=0, errors=0, dropped=0):
    def counts(latencies, server_errors=0):
        c = VersionCounts()
        for i, ms in enumerate(latencies):
            c.observe(500 if i < server_errors else 200, ms)
        return c.to_json()

    return {
        "counts": {"1/ran": counts(stable_ms), "2/ran": counts(candidate_ms, errors)},
        "agreement": {"1/2": {"compared": compared, "agreed": agreed}},
        "dropped": dropped,
    }


def test_replicas_add_up_from_the_interval_start():
    start = {"a": report([5] * 10, [5] * 10, 10, 10)}
    latest = {"a": report([5] * 30, [5] * 20 + [50] * 10, 30, 25, errors=2), "b": report([5] * 5, [5] * 5, 5, 5)}
    candidate, stable, agreement, dropped = interval_figures(latest, start, "1", "2")
    assert (candidate.requests, stable.requests) == (20 + 5, 20 + 5)
    assert candidate.server_errors == 2 and candidate.p99_ms > 45
    assert (agreement.compared, agreement.agreed) == (20 + 5, 15 + 5) and dropped == 0


def test_a_restarted_replica_counts_from_nothing():
    start = {"a": report([5] * 100, [5] * 100, 100, 100, dropped=7)}
    latest = {"a": report([5] * 3, [5] * 4, 4, 4, dropped=1)}
    candidate, stable, agreement, dropped = interval_figures(latest, start, "1", "2")
    assert (candidate.requests, stable.requests, agreement.compared, dropped) == (4, 3, 4, 1)
