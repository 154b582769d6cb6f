"""Drift accounting in a replica, off the request path: the handler hands each answered request's
tensors to `observe` (a bounded queue; full: dropped and counted, never waited on), and one thread adds
them to the model version's window (runtime.monitor.window), closes windows when due, and publishes what
they found (gauges through the telemetry, the last window for GET .../monitor)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from runtime.monitor.reference import read_reference
from runtime.monitor.window import DriftWindow, WindowClock, WindowResult
from runtime.serve.telemetry import Telemetry

if TYPE_CHECKING:
    from runtime.serve.model import ServedModel

log = logging.getLogger("trtserve.server")

QUEUE_MAX = 4096  # requests waiting to be counted, per replica


class DriftMonitor:
    def __init__(self, telemetry: Telemetry | None = None, queue_max: int = QUEUE_MAX) -> None:
        self.telemetry = telemetry or Telemetry()
        self.windows: dict[tuple[str, str], DriftWindow] = {}
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
        reference = read_reference(model.version_dir / record.file)
        clock = WindowClock(options.window_s, options.min_rows) if options else WindowClock()
        clock.start = time.time() if now is None else now
        with self._lock:
            self.windows[(model.name, model.version)] = DriftWindow(reference, clock, seed=int(model.version))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trtserve-drift", daemon=True)
            self._thread.start()
        return True

    def watches(self, model: ServedModel) -> bool:
        return (model.name, model.version) in self.windows

    def observe(self, model: ServedModel, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        key = (model.name, model.version)
        if key not in self.windows:
            return
        try:
            self._queue.put_nowait((key, model, feed, outputs))
        except queue.Full:
            self.dropped[key] = self.dropped.get(key, 0) + 1

    def result(self, model: ServedModel) -> dict:
        """The last completed window as GET .../monitor answers it."""
        last = self.last.get((model.name, model.version))
        doc = {"model": model.name, "version": model.version, "reference": self.watches(model)}
        if last is None:
            return {**doc, "window": None, "tensors": []}
        return {**doc, **last.to_json()}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.25)
            except queue.Empty:
                item = None
            while item is not None:
                try:
                    self._add(*item)
                except Exception:  # one bad request's tensors must not end drift accounting
                    log.exception("drift accounting failed for one request")
                finally:
                    self._queue.task_done()
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            self.close_due(time.time())

    def _add(self, key, model, feed, outputs) -> None:
        window = self.windows.get(key)
        if window is None:
            return
        features = window.add({**feed, **outputs})
        self.observed += 1
        for tensor in features.values():
            if "confidence" in tensor:
                self.telemetry.predictions(model, tensor["confidence"], tensor["entropy"])

    def close_due(self, now: float) -> None:
        for key, window in list(self.windows.items()):
            try:
                result = window.close_if_due(now)
            except Exception:
                log.exception("judging the drift window of %s v%s failed", *key)
                continue
            if result is not None:
                self.last[key] = result
                self.telemetry.drift(key[0], key[1], result)
                drifted = [t.name for t in result.tensors if t.drifted]
                log.info(
                    "%s v%s: drift window of %d rows: %s",
                    key[0],
                    key[1],
                    result.rows,
                    f"drifted: {', '.join(drifted)}" if drifted else "no drift",
                )

    def forget(self, model: ServedModel) -> None:
        self.windows.pop((model.name, model.version), None)

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until what was observed is counted (tests)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
