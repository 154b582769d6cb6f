"""Memory pressure: a model's batch limit stepped down before an allocation fails, and back up after.

`BatchLimiter` is the pure policy; `MemoryPressure` watches what is left where the model allocates (the
GPU's free memory for a CUDA engine, else the host's available memory) and applies the limit to the
model's batcher.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from runtime.engine.memory import available_bytes, gpu_free_total

log = logging.getLogger("trtserve.server")

MiB = 2**20


class BatchLimiter:
    """Steps a model's batch limit down under memory pressure, before an allocation fails, and back up
    once the pressure has passed: halve while available memory is below `low_water_bytes`, double
    while it is above `high_water_bytes` (hysteresis between the two), never below 1 or above the
    configured limit. Checked at most every `interval_s`."""

    def __init__(
        self, max_rows: int, low_water_bytes: int, high_water_bytes: int | None = None, interval_s: float = 0.5
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        self.configured = max_rows
        self.limit = max_rows
        self.low_water_bytes = low_water_bytes
        self.high_water_bytes = high_water_bytes if high_water_bytes is not None else 2 * low_water_bytes
        self.interval_s = interval_s
        self._checked_at = float("-inf")

    def due(self, now: float) -> bool:
        return now - self._checked_at >= self.interval_s

    def update(self, available_bytes: int | None, now: float) -> tuple[int, int] | None:
        """The new limit as (old, new) when it changed, else None."""
        if available_bytes is None or not self.due(now):
            return None
        self._checked_at = now
        old = self.limit
        if available_bytes < self.low_water_bytes and self.limit > 1:
            self.limit = max(1, self.limit // 2)
        elif available_bytes > self.high_water_bytes and self.limit < self.configured:
            self.limit = min(self.configured, self.limit * 2)
        return (old, self.limit) if self.limit != old else None


def default_low_water_bytes(on_gpu: bool) -> int:
    """5% of the memory being watched (the GPU's for a CUDA engine, else the host's), at least 256 MiB."""
    gpu = gpu_free_total() if on_gpu else None
    total = gpu[1] if gpu else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(256 * MiB, int(0.05 * total))


class MemoryPressure:
    """Checks free memory after engine calls (at most every `limiter.interval_s`) and sets the batch
    limit through `apply(new_limit)`."""

    def __init__(self, limiter: BatchLimiter, on_gpu: bool, apply: Callable[[int], None], label: str) -> None:
        self.limiter = limiter
        self.on_gpu = on_gpu
        self._apply = apply
        self._label = label

    @classmethod
    def configure(
        cls, max_rows: int, low_water_mb: float | None, on_gpu: bool, apply: Callable[[int], None], label: str
    ) -> MemoryPressure | None:
        """low_water_mb: None for the default (`default_low_water_bytes`), 0 to turn it off."""
        if low_water_mb == 0:
            return None
        low = default_low_water_bytes(on_gpu) if low_water_mb is None else int(low_water_mb * MiB)
        return cls(BatchLimiter(max_rows, low), on_gpu, apply, label)

    def available(self) -> int | None:
        return available_bytes(self.on_gpu)

    def check(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not self.limiter.due(now):
            return
        changed = self.limiter.update(self.available(), now)
        if changed:
            self._apply(changed[1])
            log.warning(
                "%s: memory %s; max_batch_size %d -> %d",
                self._label,
                "pressure" if changed[1] < changed[0] else "recovered",
                *changed,
            )
