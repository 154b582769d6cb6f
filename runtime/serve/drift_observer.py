"""Drift accounting in a replica, off the request path: each engine run of a watched model version hands
its batch (the feed and outputs as the engine saw them) to `observe` through the batcher's `on_results`
hook (a bounded queue; full: the run's rows are left out of drift accounting and counted, the requests
never wait), and one thread, every TICK_S, takes what is queued, adds it to the versions' windows
(runtime.monitor.drift_window) as batches of alike runs, closes windows when due, and publishes what they found
(gauges through the telemetry, the last window for GET .../monitor). Shadow runs count for the version
that ran them; warm-up runs do not count (a version is registered once warm). It follows the replica's
registry (runtime.serve.model_registry): a version added is registered, a version retired forgotten."""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from runtime.monitor.drift_window import DriftWindow, WindowClock, WindowResult
from runtime.monitor.reference import read_version_reference
from runtime.serve.telemetry import Telemetry

if TYPE_CHECKING:
    from runtime.serve.model import ServedModel

log = logging.getLogger("trtserve.server")

QUEUE_MAX = 4096  # engine runs waiting to be counted, per replica
TICK_S = 0.5  # how often the thread counts what is queued: many runs a numpy call, not one


def _signature(tensors: dict[str, np.ndarray]) -> tuple:
    return tuple((name, a.shape[1:], a.dtype.str) for name, a in tensors.items())


def _split(outputs: dict[str, np.ndarray], results: list[dict[str, np.ndarray]]) -> tuple[dict, list[dict]]:
    """A run's outputs as whole batches, or request by request for one padded in the run (its requests'
    results shaped unlike the batch's), so padding the engine computed is never counted."""
    whole, apart = {}, []
    for name, array in outputs.items():
        if all(r[name].shape[1:] == array.shape[1:] for r in results):
            whole[name] = array
        else:
            apart.extend({name: r[name]} for r in results)
    return whole, apart


def _concatenated(batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Batches of tensors merged where their names, row shapes and types agree."""
    groups: dict[tuple, list[dict]] = {}
    for batch in batches:
        groups.setdefault(_signature(batch), []).append(batch)
    return [
        {name: np.concatenate([b[name] for b in group]) if len(group) > 1 else group[0][name] for name in group[0]}
        for group in groups.values()
    ]


class DriftObserver:
    def __init__(self, telemetry: Telemetry | None = None, queue_max: int = QUEUE_MAX) -> None:
        self.telemetry = telemetry or Telemetry()
        self.windows: dict[tuple[str, str], tuple[ServedModel, DriftWindow]] = {}
        self.last: dict[tuple[str, str], WindowResult] = {}
        self.dropped: dict[tuple[str, str], int] = {}
        self.observed = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_max)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def register(self, model: ServedModel, now: float | None = None) -> bool:
        """Start windows for a model version whose artifact has a reference (and monitoring on)."""
        options = getattr(model.options, "monitor", None)
        record = model.manifest.reference
        if record is None or (options is not None and not options.enabled):
            return False
        reference = read_version_reference(model.version_dir, model.manifest)
        clock = WindowClock(options.window_s, options.min_rows) if options else WindowClock()
        clock.start = time.time() if now is None else now
        with self._lock:
            self.windows[(model.name, model.version)] = (model, DriftWindow(reference, clock, seed=int(model.version)))
        model.batcher.on_results = functools.partial(self.observe, model)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trtserve-drift", daemon=True)
            self._thread.start()
        return True

    def watches(self, model: ServedModel) -> bool:
        return (model.name, model.version) in self.windows

    def observe(
        self,
        model: ServedModel,
        feed: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        results: list[dict[str, np.ndarray]] | None = None,
    ) -> None:
        """One engine run: its feed, its outputs, and (to tell padded outputs) each request's results."""
        key = (model.name, model.version)
        if key not in self.windows:
            return
        try:
            self._queue.put_nowait((key, feed, outputs, results or [outputs]))
        except queue.Full:
            rows = next(iter(feed.values())).shape[0] if feed else 0
            self.dropped[key] = self.dropped.get(key, 0) + rows

    def result(self, model: ServedModel) -> dict:
        """The last completed window as GET .../monitor answers it."""
        key = (model.name, model.version)
        doc = {"model": model.name, "version": model.version, "reference": self.watches(model)}
        doc["dropped_rows"] = self.dropped.get(key, 0)  # rows left out because the queue was full
        last = self.last.get(key)
        if last is None:
            return {**doc, "window": None, "tensors": []}
        return {**doc, **last.to_json()}

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            items = []
            while len(items) < self._queue.maxsize:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                by_version: dict[tuple[str, str], list[tuple]] = {}
                for item in items:
                    by_version.setdefault(item[0], []).append(item)
                for key, runs in by_version.items():
                    self._add(key, runs)
            finally:
                for _ in items:
                    self._queue.task_done()
            self.close_due(time.time())

    def _add(self, key: tuple[str, str], runs: list[tuple]) -> None:
        """The engine runs of one model version since the last tick, counted as few batches."""
        watched = self.windows.get(key)
        if watched is None:
            return
        model, window = watched
        whole, apart = [], []
        for _, feed, outputs, results in runs:
            batch, pieces = _split(outputs, results)
            whole.append({**feed, **batch})
            apart.extend(pieces)
        for batches, counted in ((whole, True), (apart, False)):
            for batch in _concatenated(batches):
                try:
                    features = window.add(batch, count_rows=counted)
                except Exception:  # tensors drift accounting cannot count must not end it for the others
                    log.exception("drift accounting failed for a batch of %s v%s", *key)
                    continue
                if counted:
                    self.observed += next(iter(batch.values())).shape[0]
                for tensor in features.values():
                    if "confidence" in tensor:
                        self.telemetry.predictions(model, tensor["confidence"], tensor["entropy"])

    def close_due(self, now: float) -> None:
        for key, (model, window) in list(self.windows.items()):
            try:
                result = window.close_if_due(now)
            except Exception:
                log.exception("judging the drift window of %s v%s failed", *key)
                continue
            if result is not None:
                self.last[key] = result
                self.telemetry.drift(model, result)
                drifted = [t.name for t in result.tensors if t.drifted]
                log.info(
                    "%s v%s: drift window of %d rows: %s",
                    key[0],
                    key[1],
                    result.rows,
                    f"drifted: {', '.join(drifted)}" if drifted else "no drift",
                )

    def forget(self, model: ServedModel) -> None:
        """A version no longer served: its runs, windows and results are no longer counted or kept."""
        model.batcher.on_results = None
        key = (model.name, model.version)
        with self._lock:
            self.windows.pop(key, None)
            self.last.pop(key, None)
            self.dropped.pop(key, None)

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until what was observed is counted (tests)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
