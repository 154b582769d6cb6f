"""The replica's dynamic batcher: concurrent requests in, engine calls out, each caller its own rows.

The engine runs in one worker thread (ONNX Runtime and TensorRT release the GIL), so requests keep
arriving and queueing while a batch runs; when the engine frees up, everything queued (up to the
batch limit) goes in the next call. It waits up to max_queue_delay only while more requests are
already on their way in (decoding, tokenizing), never when nothing else is coming: batching adds no
latency at concurrency 1.

Background work (a rollout's mirrored runs, whose answers nobody waits for; `enqueue_background`) never
runs on the event loop, however small, and has no deadline: it is bounded by whoever queues it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from runtime.engine.errors import TrtserveError
from runtime.engine.signature import Signature
from runtime.serve import batch_formation

log = logging.getLogger("trtserve.server")


class Overloaded(TrtserveError):
    """The queue is full: answer 503 with Retry-After."""


class TimedOut(TrtserveError):
    """The request waited past its deadline: answer 504."""


@dataclass
class _Item:
    feed: Mapping[str, np.ndarray]
    work: batch_formation.Work
    future: asyncio.Future
    enqueued: float
    timing: dict = field(default_factory=dict)
    background: bool = False  # a mirrored run (runtime.serve.traffic): nobody waits for its answer


@dataclass
class BatchStats:
    """Counters a model's /stats and metrics read; times in nanoseconds, as Triton reports them."""

    batches: int = 0
    rows: int = 0
    queue_ns: int = 0
    compute_ns: int = 0  # engine calls start to finish, as the batcher waits for them
    input_ns: int = 0  # stacking requests into the call's tensors (Triton's compute_input)
    infer_ns: int = 0  # the engine itself, timed in the thread that runs it (Triton's compute_infer)
    output_ns: int = 0  # the rest: resuming on the event loop after the call, splitting results (compute_output)
    batch_sizes: dict[int, int] = field(default_factory=dict)


class _Arriving:
    def __init__(self, batcher: DynamicBatcher) -> None:
        self._batcher = batcher

    def __enter__(self) -> None:
        self._batcher._arriving += 1

    def __exit__(self, *exc) -> None:
        self._batcher._arriving -= 1


def _expire(future: asyncio.Future, timeout_s: float) -> None:
    if not future.done():
        future.set_exception(TimedOut(f"no result within {timeout_s:.3g} s"))


class DynamicBatcher:
    # Calls expected to take less than this run on the event loop itself: handing them to the engine
    # thread and back costs more (a tiny CNN at batch 1 computes in ~0.15 ms; the hand-off adds ~0.2 ms).
    INLINE_MAX_S = 0.0005

    def __init__(
        self,
        run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        signature: Signature,
        max_rows: int,
        max_delay_s: float,
        max_queued_rows: int,
        pad_values: Mapping[str, Mapping[str, float]] | None = None,
        on_batch: Callable[[int, float, float], None] | None = None,
        granularity: int = 1,
    ) -> None:
        self._run = run
        self._signature = signature
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.max_queued_rows = max_queued_rows
        self._pad_values = pad_values or {}
        self._buckets = {d: batch_formation.buckets_for(signature.dims[d], granularity) for d in self._pad_values}
        # The fixed cost of one engine call, in padded elements; until calibrate() measures it, about one
        # row at the opt sizes.
        self.call_cost = float(np.prod([signature.dims[d].opt for d in self._buckets]))
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._arriving = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._task: asyncio.Task | None = None
        self._engine_since: float | None = None  # when the engine call under way started
        self._on_batch = on_batch
        # Called with each successful engine run's (feed, outputs, per-request results), on the event loop:
        # it must only hand them over (drift accounting, runtime.serve.drift_observer). The feed and outputs are
        # as the engine saw them, padded where requests of several lengths were batched.
        self.on_results: Callable[[dict, dict, list[dict]], None] | None = None
        self._s_per_row = float("inf")  # running estimate of engine seconds per row; inf until measured
        self.stats = BatchStats()

    def calibrate(self, one_row_s: float, full_s: float, rows: int, elements_per_row: float) -> None:
        """Set the call cost from two timed engine calls at the same sizes, 1 row and `rows` rows:
        t(b) = fixed + b * per_row, so fixed = (rows * t(1) - t(rows)) / (rows - 1)."""
        per_row = max((full_s - one_row_s) / (rows - 1), 1e-9)
        fixed = max((rows * one_row_s - full_s) / (rows - 1), 0.0)
        # Never zero: with nothing to amortise, equal-sized requests still share a call.
        self.call_cost = max(fixed / per_row * elements_per_row, 1.0)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def arriving(self) -> _Arriving:
        """Context manager a handler holds while decoding a request, so the batcher knows one is coming."""
        return _Arriving(self)

    def enqueue_background(self, feed: Mapping[str, np.ndarray], work: batch_formation.Work) -> asyncio.Future:
        """Queue a run nobody waits for; its future gives (outputs, timing). Overloaded when the queue is full."""
        return self._enqueue(feed, work, background=True).future

    async def submit(self, feed: Mapping[str, np.ndarray], work: batch_formation.Work, timeout_s: float | None):
        """(outputs, timing) of this request's rows; TimedOut after `timeout_s`. A request whose caller is
        cancelled (the client went away) or that timed out is skipped if its batch has not started, and its
        rows dropped if it has. One timer per request (asyncio.wait_for and shield cost twice the CPU)."""
        item = self._enqueue(feed, work)
        if timeout_s is None:
            return await item.future
        timer = asyncio.get_running_loop().call_later(timeout_s, _expire, item.future, timeout_s)
        try:
            return await item.future
        finally:
            timer.cancel()

    def _enqueue(self, feed: Mapping[str, np.ndarray], work: batch_formation.Work, background: bool = False) -> _Item:
        if self._queued_rows + work.rows > self.max_queued_rows:
            raise Overloaded(f"{self._queued_rows} rows are queued (limit {self.max_queued_rows}); retry later")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        item = _Item(feed, work, asyncio.get_running_loop().create_future(), time.perf_counter(), background=background)
        self._queue.append(item)
        self._queued_rows += work.rows
        self._wake.set()
        return item

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather()
            items = self._take()
            try:
                await self._run_items(items)
            except Exception as e:  # a bug in batch planning must fail these requests, not the replica
                log.exception("batch failed")
                for item in items:
                    self._resolve(item, error=e)

    async def _gather(self) -> None:
        """Wait for more only while requests are already arriving and the batch has room."""
        deadline = self._queue[0].enqueued + self.max_delay_s
        while self._arriving > 0 and self._queued_rows < self.max_rows and time.perf_counter() < deadline:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                break

    def _take(self) -> list[_Item]:
        items, rows = [], 0
        # The first request always goes, even above max_rows: the limit may have stepped down under memory
        # pressure after it was accepted.
        while self._queue and (not items or rows + self._queue[0].work.rows <= self.max_rows):
            item = self._queue.popleft()
            self._queued_rows -= item.work.rows
            if item.future.done():  # timed out while queued
                continue
            items.append(item)
            rows += item.work.rows
        return items

    async def _run_items(self, items: list[_Item]) -> None:
        if not items:
            return
        limit = max(self.max_rows, max(i.work.rows for i in items))
        groups = batch_formation.plan([i.work for i in items], self._buckets, limit, self.call_cost)
        loop = asyncio.get_running_loop()
        for group in groups:
            members = [items[i] for i in group.members]
            started = time.perf_counter()
            try:
                feed = batch_formation.stack([m.feed for m in members], self._signature, group.sizes, self._pad_values)
                stacked = time.perf_counter()
                inline = self._s_per_row * group.rows < self.INLINE_MAX_S
                if inline and not all(m.background for m in members):
                    outputs, engine_s = self._timed_run(feed)
                else:
                    outputs, engine_s = await loop.run_in_executor(self._executor, self._timed_run, feed)
                results = batch_formation.unstack(outputs, self._signature, [m.work for m in members])
            except Exception as e:
                if len(members) > 1:
                    # Find the culprit: one bad request must not fail the others it was batched with.
                    for member in members:
                        await self._run_single(member)
                    continue
                self._resolve(members[0], error=e)
                continue
            finished = time.perf_counter()
            self._account(members, group.rows, started, finished, stacked - started, engine_s)
            self._hand_over(feed, outputs, results)
            for member, result in zip(members, results, strict=True):
                self._resolve(
                    member,
                    result=result,
                    queue_s=started - member.enqueued,
                    compute_s=finished - started,
                    batch_rows=group.rows,
                )

    def _timed_run(self, feed) -> tuple[dict, float]:
        started = self._engine_since = time.perf_counter()
        try:
            outputs = self._run(feed)
        finally:
            self._engine_since = None
        return outputs, time.perf_counter() - started

    def problem(self, stuck_after_s: float) -> str | None:
        """Why this batcher can serve no more, or None: its loop has ended, or one engine call has run
        longer than `stuck_after_s` (a wedged engine, a lost GPU). The replica's health check asks."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            error = self._task.exception()
            return f"the batching loop ended: {type(error).__name__ if error else 'returned'}"
        since = self._engine_since
        if since is not None and time.perf_counter() - since > stuck_after_s:
            return f"an engine call has run for {time.perf_counter() - since:.0f} s (limit {stuck_after_s:.0f} s)"
        return None

    async def _run_single(self, item: _Item) -> None:
        started = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            outputs, engine_s = await loop.run_in_executor(self._executor, self._timed_run, dict(item.feed))
        except Exception as e:
            self._resolve(item, error=e)
            return
        finished = time.perf_counter()
        self._account([item], item.work.rows, started, finished, 0.0, engine_s)
        self._hand_over(dict(item.feed), outputs, [outputs])
        self._resolve(item, result=outputs, queue_s=started - item.enqueued, compute_s=finished - started)

    def _account(self, members, rows: int, started: float, finished: float, input_s: float, engine_s: float) -> None:
        per_row = (finished - started) / rows
        self._s_per_row = per_row if self._s_per_row == float("inf") else 0.9 * self._s_per_row + 0.1 * per_row
        self.stats.batches += 1
        self.stats.rows += rows
        # In whole nanoseconds first, so the three parts add up to the call exactly.
        call_ns, input_ns, infer_ns = (int(s * 1e9) for s in (finished - started, input_s, engine_s))
        self.stats.compute_ns += call_ns
        self.stats.input_ns += input_ns
        self.stats.infer_ns += infer_ns
        self.stats.output_ns += call_ns - input_ns - infer_ns
        self.stats.queue_ns += sum(int((started - m.enqueued) * 1e9) for m in members)
        self.stats.batch_sizes[rows] = self.stats.batch_sizes.get(rows, 0) + 1
        if self._on_batch:
            self._on_batch(rows, finished - started, len(members))

    def _hand_over(self, feed: dict, outputs: dict, results: list[dict]) -> None:
        if self.on_results is None:
            return
        try:
            self.on_results(feed, outputs, results)
        except Exception:  # what watches the results must never fail the requests
            log.exception("handing a batch's results over failed")

    @staticmethod
    def _resolve(item: _Item, result=None, error: Exception | None = None, **timing) -> None:
        if item.future.done():
            return
        item.timing.update(timing)
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result((result, timing))

    def close(self) -> None:
        if self._task:
            self._task.cancel()
        for item in self._queue:  # nothing will run them now
            item.future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
