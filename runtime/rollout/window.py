"""One version's traffic, counted so that replicas' counts add up: requests, server errors, and latency in
fixed log-spaced buckets (5 % apart), from which the p99 of any span is read within a bucket's width.

Cumulative counts are kept; an interval is the difference of two snapshots (`since`), and the counts of
several replicas are their sum (`plus`), so the decision-maker judges the whole deployment's interval.
A server error is an answer of 500 or above (overload and timeouts included): a 4xx is the client's.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from runtime.rollout.analysis import VersionWindow

_LOW_MS, _RATIO = 0.05, 1.05
BOUNDS_MS = tuple(_LOW_MS * _RATIO**k for k in range(int(math.log(600_000 / _LOW_MS, _RATIO)) + 2))


@dataclass
class VersionCounts:
    requests: int = 0
    server_errors: int = 0
    buckets: dict[int, int] = field(default_factory=dict)  # bucket index -> count (sparse)

    def observe(self, status: int, latency_ms: float) -> None:
        self.requests += 1
        self.server_errors += int(status >= 500)
        index = bisect.bisect_left(BOUNDS_MS, latency_ms)
        self.buckets[index] = self.buckets.get(index, 0) + 1

    def plus(self, other: VersionCounts) -> VersionCounts:
        buckets = dict(self.buckets)
        for index, count in other.buckets.items():
            buckets[index] = buckets.get(index, 0) + count
        return VersionCounts(self.requests + other.requests, self.server_errors + other.server_errors, buckets)

    def since(self, earlier: VersionCounts) -> VersionCounts:
        buckets = {i: c - earlier.buckets.get(i, 0) for i, c in self.buckets.items()}
        return VersionCounts(
            self.requests - earlier.requests,
            self.server_errors - earlier.server_errors,
            {i: c for i, c in buckets.items() if c},
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
        return {"requests": self.requests, "server_errors": self.server_errors, "buckets": self.buckets}

    @classmethod
    def from_json(cls, doc: dict) -> VersionCounts:
        return cls(doc["requests"], doc["server_errors"], {int(i): int(c) for i, c in doc["buckets"].items()})
