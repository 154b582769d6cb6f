"""One version's traffic, counted so that replicas' counts add up: requests, server errors, and latency in
fixed log-spaced buckets (5 % apart), from which the p99 of any span is read within a bucket's width.

Cumulative counts are kept; an interval is the difference of two snapshots (`since`), and the counts of
several replicas are their sum (`plus`), so the decision-maker judges the whole deployment's interval.

What counts (`judged`, `server_error`): a server error is an answer of 500 or above (overload and
timeouts included) and counts against the version; a client's error (4xx) says nothing of the version and
is counted apart, in neither the requests, the errors nor the latency a rollout is judged on, so a client
cannot pad a version's figures with requests it knows will be refused.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from runtime.rollout.analysis import VersionWindow

_LOW_MS, _RATIO = 0.05, 1.05
BOUNDS_MS = tuple(_LOW_MS * _RATIO**k for k in range(int(math.log(600_000 / _LOW_MS, _RATIO)) + 2))


def judged(status: int) -> bool:
    """Whether an answer counts in a rollout's analysis: anything but a client's error."""
    return not 400 <= status < 500


def server_error(status: int) -> bool:
    return status >= 500


@dataclass
class VersionCounts:
    requests: int = 0  # judged answers (client errors are not)
    server_errors: int = 0
    buckets: dict[int, int] = field(default_factory=dict)  # bucket index -> count (sparse), judged answers
    client_errors: int = 0  # seen, never judged

    def observe(self, status: int, latency_ms: float) -> None:
        if not judged(status):
            self.client_errors += 1
            return
        self.requests += 1
        self.server_errors += int(server_error(status))
        index = bisect.bisect_left(BOUNDS_MS, latency_ms)
        self.buckets[index] = self.buckets.get(index, 0) + 1

    def plus(self, other: VersionCounts) -> VersionCounts:
        buckets = dict(self.buckets)
        for index, count in other.buckets.items():
            buckets[index] = buckets.get(index, 0) + count
        return VersionCounts(
            self.requests + other.requests,
            self.server_errors + other.server_errors,
            buckets,
            self.client_errors + other.client_errors,
        )

    def since(self, earlier: VersionCounts) -> VersionCounts:
        buckets = {i: c - earlier.buckets.get(i, 0) for i, c in self.buckets.items()}
        return VersionCounts(
            self.requests - earlier.requests,
            self.server_errors - earlier.server_errors,
            {i: c for i, c in buckets.items() if c},
            self.client_errors - earlier.client_errors,
        )

    def percentile_ms(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-th percentile (None without requests)."""
        total = sum(self.buckets.values())
        if not total:
            return None
        rank, seen = math.ceil(q / 100 * total), 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return BOUNDS_MS[min(index, len(BOUNDS_MS) - 1)]
        return BOUNDS_MS[-1]

    def window(self) -> VersionWindow:
        return VersionWindow(self.requests, self.server_errors, self.percentile_ms(99))

    def to_json(self) -> dict:
        return {
            "requests": self.requests,
            "server_errors": self.server_errors,
            "buckets": self.buckets,
            "client_errors": self.client_errors,
        }

    @classmethod
    def from_json(cls, doc: dict) -> VersionCounts:
        buckets = {int(i): int(c) for i, c in doc["buckets"].items()}
        # client_errors: absent from the reports of replicas started before it was counted
        return cls(doc["requests"], doc["server_errors"], buckets, doc.get("client_errors", 0))
