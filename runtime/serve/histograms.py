"""Prometheus histograms kept in the replica and exported as cumulative gauges; counters kept in the
replica and published as their growth; the thread that publishes both once a second.

Ray's `Histogram` is exact but costs per observation where it hurts: every 10 s each worker reports
its histograms to the node's metrics agent, which replays every observation one by one
(ray-project/ray#64891). At ~800 requests/s on a 2-core machine that replay took a few hundred ms of
CPU every 10 s, and the requests in flight at that moment made the p99 (benchmarks/RESULTS.md).
Here an observation is a bucket increment in this process; a background thread publishes the
cumulative counts once a second as gauges named like Prometheus' own histogram series
(`<name>_bucket{le=...}`, `<name>_sum`, `<name>_count`), so `histogram_quantile` and `rate` work on
them unchanged, and the agent handles a few dozen values per report whatever the request rate.
Counters likewise: a request adds 1 to a dict entry here (Ray's `Counter.inc` costs microseconds per call
in the replica's event loop), and what each count grew by is published at the same pace.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

log = logging.getLogger("trtserve.server")


class GaugeLike(Protocol):
    def set(self, value: float, tags: dict[str, str]) -> None: ...


class CounterLike(Protocol):
    def inc(self, value: float, tags: dict[str, str]) -> None: ...


GaugeFactory = Callable[[str, str, tuple[str, ...]], GaugeLike]  # (name, description, tag keys)


def le_label(bound: float) -> str:
    """Prometheus' spelling of a bucket bound: 0.005, 1.0, +Inf."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class CumulativeHistogram:
    def __init__(
        self,
        name: str,
        description: str,
        boundaries: Sequence[float],
        tag_keys: Sequence[str],
        gauge: GaugeFactory,
    ) -> None:
        if list(boundaries) != sorted(set(boundaries)) or not boundaries:
            raise ValueError(f"{name}: bucket boundaries must be increasing and not empty")
        self.name = name
        self.boundaries = [float(b) for b in boundaries]
        self._labels = [le_label(b) for b in self.boundaries] + ["+Inf"]
        tag_keys = tuple(tag_keys)
        self._bucket = gauge(f"{name}_bucket", description, (*tag_keys, "le"))
        self._sum = gauge(f"{name}_sum", f"{description} (sum)", tag_keys)
        self._count = gauge(f"{name}_count", f"{description} (count)", tag_keys)
        self._series: dict[tuple[tuple[str, str], ...], list] = {}  # tags -> [counts, sum]
        self._lock = threading.Lock()

    def observe(self, value: float, tags: Mapping[str, str]) -> None:
        key = tuple(sorted(tags.items()))
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [[0] * (len(self.boundaries) + 1), 0.0]
            series[0][bisect_left(self.boundaries, value)] += 1  # le semantics: value <= bound
            series[1] += value

    def observe_many(self, values, tags: Mapping[str, str]) -> None:
        """Observe every value of an array at once."""
        import numpy as np

        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if not values.size:
            return
        counts = np.bincount(np.searchsorted(self.boundaries, values, side="left"), minlength=len(self.boundaries) + 1)
        key = tuple(sorted(tags.items()))
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [[0] * (len(self.boundaries) + 1), 0.0]
            series[0] = [a + int(b) for a, b in zip(series[0], counts, strict=True)]
            series[1] += float(values.sum())

    def keep_only(self, keep: Callable[[dict[str, str]], bool]) -> None:
        """Drop the series whose tags `keep` refuses: they are published no more."""
        with self._lock:
            for key in [key for key in self._series if not keep(dict(key))]:
                del self._series[key]

    def snapshot(self) -> dict[tuple[tuple[str, str], ...], tuple[list[int], float]]:
        """Cumulative bucket counts (one per bound, +Inf last) and the sum, per tag set."""
        with self._lock:
            return {key: (_cumulative(counts), total) for key, (counts, total) in self._series.items()}

    def flush(self) -> None:
        """Publish every series, changed or not: a gauge is only as fresh as its last set, and a series
        left alone can drop out of what the metrics agent reports."""
        with self._lock:
            series = [(key, list(counts), total) for key, (counts, total) in self._series.items()]
        for key, counts, total in series:
            tags = dict(key)
            cumulative = _cumulative(counts)
            for label, count in zip(self._labels, cumulative, strict=True):
                self._bucket.set(count, {**tags, "le": label})
            self._sum.set(total, tags)
            self._count.set(cumulative[-1], tags)


class CounterGrowth:
    """Publishes cumulative counts kept elsewhere (a dict, an object's stats) to a Ray Counter: each time,
    what each count grew by since the last time. Keys are tuples of tag values, in `tag_keys`' order."""

    def __init__(self, counter: CounterLike, tag_keys: Sequence[str]) -> None:
        self._counter = counter
        self._tag_keys = tuple(tag_keys)
        self._published: dict[tuple, int] = {}

    def publish(self, counts: Mapping[tuple, int]) -> None:
        """`counts`: a snapshot (a copy of a dict another thread writes, never the dict itself)."""
        for key, now in counts.items():
            before = self._published.get(key, 0)
            if now > before:
                self._counter.inc(now - before, dict(zip(self._tag_keys, map(str, key), strict=True)))
                self._published[key] = now


def _cumulative(counts: list[int]) -> list[int]:
    out, running = [], 0
    for c in counts:
        running += c
        out.append(running)
    return out


class Publisher:
    """Flushes histograms every `interval_s` from a daemon thread, and calls `refresh` functions (which
    set other gauges again, and may drop series no longer wanted) at the same pace, just before."""

    def __init__(
        self,
        histograms: Sequence[CumulativeHistogram],
        interval_s: float = 1.0,
        refresh: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._histograms = list(histograms)
        self._refresh = list(refresh)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="histogram-publisher", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.flush()
            except Exception:  # metrics must never take the replica down; try again next time
                log.exception("publishing histograms failed")

    def flush(self) -> None:
        for refresh in self._refresh:
            refresh()
        for histogram in self._histograms:
            histogram.flush()

    def stop(self) -> None:
        self._stop.set()
        self.flush()
