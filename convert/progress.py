"""Progress lines for long steps (export, build, parity), on the `trtserve.convert` logger."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

log = logging.getLogger("trtserve.convert")


@contextlib.contextmanager
def step(label: str) -> Iterator[None]:
    log.info("%s ...", label)
    start = time.perf_counter()
    yield
    log.info("%s: done in %.1f s", label, time.perf_counter() - start)


class Counter:
    """Logs `label i/n` at most every `every` seconds and at the end."""

    def __init__(self, label: str, total: int, every: float = 5.0) -> None:
        self.label, self.total, self.every = label, total, every
        self._last = time.perf_counter()

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if done == self.total or now - self._last >= self.every:
            log.info("%s %d/%d", self.label, done, self.total)
            self._last = now
