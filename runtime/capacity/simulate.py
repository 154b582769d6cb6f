"""A discrete-event simulation of trtserve replicas under Poisson arrivals.

It answers "what p99 does this configuration give at R requests/s?" from measured costs, without
queueing-theory shortcuts (batching is not M/M/c). A replica is what runs in it, event by event: its
asyncio event loop, which runs one task at a time in the order they became ready (each request's HTTP
handling and decoding, each engine call's hand-off and the hand-back of its results), the dynamic
batcher's rule, the engine in its own thread, and the loop's stalls (times it cannot run at all).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ServiceTime = Callable[[int, np.random.Generator], float]  # rows -> seconds for one engine call


@dataclass
class SimResult:
    rate: float
    latencies_s: np.ndarray
    batch_sizes: np.ndarray
    duration_s: float

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1e3)

    @property
    def mean_s(self) -> float:
        return float(self.latencies_s.mean())

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.duration_s

    @classmethod
    def pooled(cls, runs: list[SimResult]) -> SimResult:
        """Several runs as one: their requests and engine calls together, over their time together."""
        return cls(
            runs[0].rate,
            np.concatenate([r.latencies_s for r in runs]),
            np.concatenate([r.batch_sizes for r in runs]),
            sum(r.duration_s for r in runs),
        )


def profile_service_time(batch_seconds: dict[int, float]) -> ServiceTime:
    """Deterministic service time from a measured profile {batch size: seconds}, linearly interpolated."""
    sizes = np.array(sorted(batch_seconds))
    seconds = np.array([batch_seconds[b] for b in sizes])

    def service(rows: int, rng: np.random.Generator) -> float:
        return float(np.interp(rows, sizes, seconds))

    return service


def simulate_replicas(
    rate: float,
    engine_time: ServiceTime,
    loop_s: float,
    max_batch_size: int,
    max_delay_s: float,
    replicas: int = 1,
    requests: int = 20_000,
    overhead_s: float | np.ndarray = 0.0,
    seed: int = 0,
    warmup_fraction: float = 0.1,
    call_s: float = 0.0,
    stall_rate: float = 0.0,
    stall_s: np.ndarray | tuple = (),
) -> SimResult:
    """Latency of `requests` Poisson arrivals at `rate`/s, the first `warmup_fraction` dropped.

    In a replica's event loop, each request costs `loop_s` (the HTTP layer, decoding, encoding its
    answer), run when it arrives, behind whatever is ready before it; each engine call costs `call_s`,
    half before the call (stacking, the hand-off to the engine thread) and half after it (taking the
    results back, splitting, answering), the second half a task queued when the engine finishes, behind
    everything that became ready first: the batcher starts nothing new until it has run, so under load an
    engine call lasts until the loop gets back to it. The engine runs `engine_time(rows)` a call. The
    batcher's rule: when a call is done and requests are queued, the next call takes them, up to
    max_batch_size rows; while requests are still being decoded and the batch has room it waits for them,
    up to max_delay_s after the oldest was queued. Stalls (`stall_rate` a second, durations drawn from
    `stall_s`) are times the loop cannot run (the CPU or the GIL taken by something else); work in
    progress resumes after them. Replicas each get an equal share of the stream. `overhead_s` is latency
    added outside the replicas (ingress, network, the client): one figure for every request, or measured
    samples drawn at random per request."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=requests))
    owner = rng.integers(0, replicas, size=requests) if replicas > 1 else np.zeros(requests, dtype=int)
    finish = np.zeros(requests)
    batches: list[int] = []
    for replica in range(replicas):
        index = np.flatnonzero(owner == replica)
        stalls = _Stalls(stall_rate, stall_s, float(arrivals[-1]) + 10.0, rng)
        finish[index] = _replica(
            arrivals[index], engine_time, loop_s, call_s, max_batch_size, max_delay_s, stalls, rng, batches
        )
    skip = int(requests * warmup_fraction)
    latencies = finish[skip:] - arrivals[skip:]
    if np.ndim(overhead_s):
        latencies = latencies + rng.choice(np.asarray(overhead_s, dtype=float), size=len(latencies))
    else:
        latencies = latencies + overhead_s
    return SimResult(rate, latencies, np.array(batches), float(finish.max() - arrivals[skip]))


class _Stalls:
    """Times the event loop cannot run: Poisson starts, measured durations."""

    def __init__(self, rate: float, durations, horizon: float, rng: np.random.Generator) -> None:
        durations = np.asarray(durations, dtype=float)
        count = rng.poisson(rate * horizon) if rate > 0 and len(durations) else 0
        self.starts = np.sort(rng.uniform(0.0, horizon, count))
        self.ends = self.starts + rng.choice(durations, count) if count else self.starts
        self._first = 0

    def finish(self, start: float, work: float) -> float:
        """When `work` seconds of loop work started at `start` are done, stalls included."""
        if not len(self.starts):
            return start + work
        j = self._first
        while j < len(self.starts) and self.ends[j] <= start:
            j += 1
        self._first = j  # tasks start in time order, so earlier stalls never matter again
        t = start
        while j < len(self.starts) and self.starts[j] < t + work:
            if self.starts[j] > t:
                work -= self.starts[j] - t
            t = max(t, self.ends[j])
            j += 1
        return t + work


_ARRIVE, _QUEUED, _ENGINE_DONE, _IDLE, _DEADLINE = range(5)  # events
_DECODE, _DISPATCH, _COMPLETE = range(3)  # the loop's tasks


def _replica(arrived, engine_time, loop_s, call_s, max_batch, max_delay_s, stalls, rng, batches) -> np.ndarray:
    """One replica's event loop, batcher and engine (see simulate_replicas); each request's finish time."""
    n = len(arrived)
    done = np.zeros(n)
    events = [(float(t), i, _ARRIVE, i) for i, t in enumerate(arrived)]  # (time, order, kind, payload)
    heapq.heapify(events)
    order = n
    ready: deque = deque()  # the loop's ready tasks, in order
    queue: deque = deque()  # decoded requests waiting for the engine: (request, queued at)
    decoding = 0  # requests arrived and not yet queued (the batcher waits for these)
    loop_free = 0.0
    engine_busy = dispatch_ready = False
    deadline_set = -1.0

    def push(t: float, kind: int, payload=None) -> None:
        nonlocal order
        heapq.heappush(events, (t, order, kind, payload))
        order += 1

    def consider(now: float) -> None:
        """The batcher, when something changed: start a call now, or wait for requests being decoded."""
        nonlocal dispatch_ready, deadline_set
        if engine_busy or dispatch_ready or not queue:
            return
        deadline = queue[0][1] + max_delay_s
        if decoding > 0 and len(queue) < max_batch and now < deadline:
            if deadline_set != deadline:
                push(deadline, _DEADLINE)
                deadline_set = deadline
            return
        ready.append((_DISPATCH, None))
        dispatch_ready = True

    while events or ready:
        if ready and (not events or loop_free <= events[0][0]):
            kind, payload = ready.popleft()
            if kind == _DECODE:
                loop_free = stalls.finish(loop_free, loop_s)
                push(loop_free, _QUEUED, payload)
            elif kind == _DISPATCH:
                dispatch_ready = False
                members = [queue.popleft()[0] for _ in range(min(max_batch, len(queue)))]
                batches.append(len(members))
                loop_free = stalls.finish(loop_free, call_s / 2)
                engine_busy = True
                push(loop_free + engine_time(len(members), rng), _ENGINE_DONE, members)
            else:  # _COMPLETE
                loop_free = stalls.finish(loop_free, call_s / 2)
                done[payload] = loop_free
                engine_busy = False
                push(loop_free, _IDLE)
            continue
        now, _, kind, payload = heapq.heappop(events)
        loop_free = max(loop_free, now)
        if kind == _ARRIVE:
            decoding += 1
            ready.append((_DECODE, payload))
        elif kind == _QUEUED:
            decoding -= 1
            queue.append((payload, now))
            consider(now)
        elif kind == _ENGINE_DONE:
            ready.append((_COMPLETE, payload))
        else:  # _IDLE, _DEADLINE
            consider(now)
    return done
