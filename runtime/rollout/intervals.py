"""The figures of one analysis interval, added up over every replica's reports.

Each replica reports its cumulative counts of every version's runs (answered or mirrored: the model's
own work, runtime.serve.traffic.Traffic.ran) (runtime.serve.traffic.Traffic.report) for a model; the
figures read only the runs the routing chose (`{version}/ran`): requests pinned to a version are reported
apart and never read here, nor are client errors (runtime.rollout.version_counts.judged). The decision-maker
keeps each replica's report from the interval's start. An interval's figures are the sum
over replicas of (latest - at start); a replica that appeared during the interval started from nothing,
and one whose counts went backwards (restarted with the same id) is counted from nothing again.
"""

from __future__ import annotations

from collections.abc import Mapping

from runtime.rollout.analysis import Agreement, VersionWindow
from runtime.rollout.version_counts import VersionCounts

Report = dict  # one replica's Traffic.report(model)


def _counts(report: Report | None, key: str) -> VersionCounts:
    doc = (report or {}).get("counts", {}).get(key)
    return VersionCounts.from_json(doc) if doc else VersionCounts()


def _agreement(report: Report | None, key: str) -> tuple[int, int]:
    doc = (report or {}).get("agreement", {}).get(key) or {}
    return int(doc.get("compared", 0)), int(doc.get("agreed", 0))


def interval_figures(
    latest: Mapping[str, Report],
    at_start: Mapping[str, Report],
    stable: str,
    candidate: str,
) -> tuple[VersionWindow, VersionWindow, Agreement, int]:
    """(candidate, stable, agreement, mirrored runs dropped) over the interval, every replica together."""
    totals = {"candidate": VersionCounts(), "stable": VersionCounts()}
    compared = agreed = dropped = 0
    for replica, report in latest.items():
        before = at_start.get(replica)
        for side, key in (("candidate", f"{candidate}/ran"), ("stable", f"{stable}/ran")):
            now, then = _counts(report, key), _counts(before, key)
            if now.requests < then.requests:  # counts went backwards: a restarted replica
                then = VersionCounts()
            totals[side] = totals[side].plus(now.since(then))
        pair = f"{stable}/{candidate}"
        (c1, a1), (c0, a0) = _agreement(report, pair), _agreement(before, pair)
        if c1 < c0:
            c0 = a0 = 0
        compared, agreed = compared + c1 - c0, agreed + a1 - a0
        d1, d0 = int(report.get("dropped", 0)), int((before or {}).get("dropped", 0))
        dropped += d1 - d0 if d1 >= d0 else d1
    return totals["candidate"].window(), totals["stable"].window(), Agreement(compared, agreed), dropped
