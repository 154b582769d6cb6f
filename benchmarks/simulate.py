"""A discrete-event simulation of replicas running trtserve's dynamic batcher under Poisson arrivals.

It answers "what p99 does this configuration give at R requests/s?" from a service-time profile,
without queueing-theory shortcuts (batching is not M/M/c). Each replica has one engine and its own queue;
Ray's router sends each request to the less loaded of two random replicas. When an engine is free it
takes everything queued, up to max_batch_size rows, as trtserve's batcher does (it waits only for
requests already arriving, which a Poisson source never has).
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


def simulate(
    rate: float,
    service_time: ServiceTime,
    max_batch_size: int = 1,
    replicas: int = 1,
    requests: int = 100_000,
    overhead_s: float | np.ndarray = 0.0,
    seed: int = 0,
    warmup_fraction: float = 0.1,
) -> SimResult:
    """Latency of `requests` Poisson arrivals at `rate`/s. `overhead_s` is latency added outside the
    replica's queue (network, ingress, the client): one figure for every request, or measured samples
    drawn at random per request. The first `warmup_fraction` of requests is dropped."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=requests))
    queues: list[deque[int]] = [deque() for _ in range(replicas)]
    busy = [False] * replicas
    outstanding = [0] * replicas
    finish = np.zeros(requests)
    batches: list[int] = []
    events: list[tuple[float, int, int, list[int]]] = []  # (time, kind 0=finish, replica, members)
    counter = 0

    def start(replica: int, now: float) -> None:
        nonlocal counter
        members = [queues[replica].popleft() for _ in range(min(max_batch_size, len(queues[replica])))]
        busy[replica] = True
        batches.append(len(members))
        counter += 1
        heapq.heappush(events, (now + service_time(len(members), rng), counter, replica, members))

    for index, now in enumerate(arrivals):
        while events and events[0][0] <= now:
            done, _, replica, members = heapq.heappop(events)
            for m in members:
                finish[m] = done
            outstanding[replica] -= len(members)
            busy[replica] = False
            if queues[replica]:
                start(replica, done)
        if replicas == 1:
            replica = 0
        else:
            a, b = rng.choice(replicas, size=2, replace=False)
            replica = a if outstanding[a] <= outstanding[b] else b
        queues[replica].append(index)
        outstanding[replica] += 1
        if not busy[replica]:
            start(replica, now)
    while events:
        done, _, replica, members = heapq.heappop(events)
        for m in members:
            finish[m] = done
        busy[replica] = False
        if queues[replica]:
            start(replica, done)
    skip = int(requests * warmup_fraction)
    latencies = _with_overhead(finish[skip:] - arrivals[skip:], overhead_s, rng)
    return SimResult(rate, latencies, np.array(batches), float(finish[-1] - arrivals[skip]))


def _with_overhead(latencies: np.ndarray, overhead_s: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Latency outside the replica's queue: one figure for all, or measured samples drawn per request."""
    if np.ndim(overhead_s):
        return latencies + rng.choice(np.asarray(overhead_s, dtype=float), size=len(latencies))
    return latencies + overhead_s


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
) -> SimResult:
    """trtserve's replica as it runs. Its event loop does one thing at a time: each request costs it
    `loop_s` (HTTP, decoding, encoding), in arrival order, before joining the batcher's queue, and each
    engine call costs it `call_s` (stacking, the hand-off to the engine thread, splitting, answering).
    The engine runs in its own thread. When the engine is free it takes what is queued, but while requests
    are still being decoded and the batch has room it waits for them, up to max_delay_s after the oldest
    was queued (trtserve's rule: under load something is nearly always being decoded, so the delay is
    paid). Replicas each get an equal share of the Poisson stream. `overhead_s` as in `simulate`."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=requests))
    owner = rng.integers(0, replicas, size=requests) if replicas > 1 else np.zeros(requests, dtype=int)
    finish = np.zeros(requests)
    batches: list[int] = []
    for replica in range(replicas):
        index = np.flatnonzero(owner == replica)
        loop = _EventLoop(arrivals[index], loop_s)
        finish[index] = _run_batcher(loop, engine_time, call_s, max_batch_size, max_delay_s, rng, batches)
    skip = int(requests * warmup_fraction)
    latencies = _with_overhead(finish[skip:] - arrivals[skip:], overhead_s, rng)
    return SimResult(rate, latencies, np.array(batches), float(finish.max() - arrivals[skip]))


class _EventLoop:
    """One replica's event loop, non-preemptive, one task at a time: request decodes in arrival order,
    and engine-call work when the batcher asks for it; a decode that started first finishes first."""

    def __init__(self, arrived: np.ndarray, loop_s: float) -> None:
        self.arrived = arrived
        self.loop_s = loop_s
        self.decoded = np.full(len(arrived), np.inf)
        self.free = 0.0  # when the loop is next idle
        self.next = 0  # the next request not yet decoded

    def commit_until(self, t: float) -> None:
        """Decode every request whose decode starts at or before t."""
        n = len(self.arrived)
        while self.next < n and max(self.free, self.arrived[self.next]) <= t:
            self.free = max(self.free, self.arrived[self.next]) + self.loop_s
            self.decoded[self.next] = self.free
            self.next += 1

    def peek(self, j: int) -> float:
        """When request j would be decoded if no engine-call work came first."""
        if j < self.next:
            return self.decoded[j]
        free = self.free
        for k in range(self.next, j + 1):
            free = max(free, self.arrived[k]) + self.loop_s
        return free

    def run(self, at: float, seconds: float) -> float:
        """Engine-call work of `seconds` wanted at `at`: returns when it is done."""
        self.commit_until(at)
        self.free = max(self.free, at) + seconds
        return self.free


def _run_batcher(loop: _EventLoop, engine_time, call_s, max_batch, max_delay_s, rng, batches) -> np.ndarray:
    arrived = loop.arrived
    n = len(arrived)
    done = np.zeros(n)
    queue: deque[int] = deque()
    nxt = 0  # next request not yet in the queue (requests are queued in decode order)
    now = 0.0  # when the engine is next free
    while nxt < n or queue:
        loop.commit_until(now)
        while nxt < loop.next and loop.decoded[nxt] <= now:
            queue.append(nxt)
            nxt += 1
        if not queue:
            now = max(now, loop.peek(nxt))
            continue
        deadline = loop.decoded[queue[0]] + max_delay_s
        # Wait while a request is being decoded (arrived, not yet queued) and the batch has room.
        while len(queue) < max_batch and nxt < n and arrived[nxt] <= now and now < deadline:
            ready = loop.peek(nxt)
            if ready <= deadline:
                now = max(now, ready)
                loop.commit_until(now)
                queue.append(nxt)
                nxt += 1
            else:
                now = deadline
        members = [queue.popleft() for _ in range(min(max_batch, len(queue)))]
        batches.append(len(members))
        started = loop.run(now, call_s) if call_s else now
        now = started + engine_time(len(members), rng)
        done[members] = now
    return done
