"""A closed-loop HTTP/1.1 load generator on raw asyncio streams (keep-alive, one connection per worker):
cheap enough per request that on a 2-core machine the server, not the generator, is what gets measured."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    completed: int
    statuses: dict[int, int]
    latencies_ms: np.ndarray
    rows: int = 0  # rows (e.g. sentences) in the requests answered 200
    retried: int = 0  # requests sent again after a kept-alive connection was closed under them
    exchanged: int = 0  # every request answered, the warm-up's included (what the server did in all)

    @property
    def rps(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 3),
            "requests": self.completed,
            "rps": round(self.rps, 1),
            "rows_per_s": round(self.rows_per_s, 1),
            "p50_ms": round(self.percentile(50), 3),
            "p90_ms": round(self.percentile(90), 3),
            "p99_ms": round(self.percentile(99), 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "retried": self.retried,
        }


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            body += await reader.readexactly(size + 2)
            if size == 0:
                return status, bytes(body)
    return status, await reader.readexactly(length)


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
NOT_SENT = -1  # open loop: every connection was busy and the limit was reached, so the request never left


async def _exchange(host: str, port: int, connection: Connection | None, request: bytes):
    """Send `request` and read the answer: (status, connection to reuse or None, retried). A keep-alive
    connection the server closed while it sat idle (an ingress reloading its configuration does that)
    fails before any answer arrives; like HTTP clients do, the request is then sent once more on a fresh
    connection, and that is counted. A failure on a fresh connection is the server's: status 0."""
    for attempt in range(2):
        reused = connection is not None
        try:
            if connection is None:
                connection = await asyncio.open_connection(host, port)
            connection[1].write(request)
            status, _ = await _read_response(connection[0])
            return status, connection, attempt > 0
        except asyncio.IncompleteReadError as e:
            connection[1].close()
            connection = None
            if not (reused and not e.partial):
                break
        except OSError:
            if connection is not None:
                connection[1].close()
            connection = None
            if not reused:
                break
    return 0, None, False


async def closed_loop(
    host: str,
    port: int,
    requests: bytes | list[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    rows: list[int] | None = None,
) -> LoadResult:
    """`concurrency` workers, each sending the next request as soon as the last one is answered.
    Several requests are sent in turn (worker i starts at request i)."""
    requests = [requests] if isinstance(requests, bytes) else list(requests)
    rows = rows or [1] * len(requests)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    answered_rows = retried = exchanged = 0
    counter = iter(range(10**12))
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop = measure_from + duration_s

    async def worker() -> None:
        nonlocal answered_rows, retried, exchanged
        connection = None
        while True:
            sent = time.perf_counter()
            if sent >= stop:
                break
            index = next(counter) % len(requests)
            status, connection, again = await _exchange(host, port, connection, requests[index])
            if status == 0:
                await asyncio.sleep(0.01)  # connection refused or dropped: counted, then reconnect
            done = time.perf_counter()
            exchanged += status != 0
            if sent >= measure_from:
                latencies.append((done - sent) * 1e3)
                statuses[status] = statuses.get(status, 0) + 1
                retried += again
                if status == 200:
                    answered_rows += rows[index]
        if connection is not None:
            connection[1].close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = max(time.perf_counter(), stop) - measure_from
    return LoadResult(
        concurrency,
        min(seconds, duration_s + 0.5),
        len(latencies),
        statuses,
        np.array(latencies),
        answered_rows,
        retried,
        exchanged,
    )


@dataclass
class OpenLoopResult:
    """Per request: when it was due, when it went out, when it came back, and how it ended."""

    rate: float
    scheduled: np.ndarray  # seconds from the start
    sent: np.ndarray
    completed: np.ndarray
    statuses: np.ndarray  # 0: connection error or timeout; -1 (NOT_SENT): the generator ran out of connections
    retried: int = 0  # requests sent again after a kept-alive connection was closed under them

    @property
    def latencies_ms(self) -> np.ndarray:
        """From the scheduled send time, so a stalled server (or generator) is charged in full: no
        coordinated omission."""
        return (self.completed - self.scheduled) * 1e3

    @property
    def send_lag_ms(self) -> np.ndarray:
        return (self.sent - self.scheduled) * 1e3

    def summary(self) -> dict:
        lat, lag = self.latencies_ms, self.send_lag_ms
        span = float(self.completed.max() - self.scheduled.min()) if len(lat) else 0.0
        ok = self.statuses == 200
        statuses, counts = np.unique(self.statuses, return_counts=True)
        result = {
            "offered_rps": round(self.rate, 1),
            # what this schedule actually offered (a Poisson schedule's length varies around count / rate)
            "scheduled_rps": round((len(lat) - 1) / float(np.ptp(self.scheduled)), 1) if len(lat) > 1 else 0.0,
            "achieved_rps": round(float(ok.sum()) / span, 1) if span else 0.0,
            "requests": len(lat),
            **{f"p{q:g}_ms".replace(".", "_"): round(float(np.percentile(lat, q)), 3) for q in (50, 90, 95, 99, 99.9)},
            "send_lag_p99_ms": round(float(np.percentile(lag, 99)), 3),
            "statuses": {str(int(s)): int(c) for s, c in zip(statuses, counts, strict=True)},
            "retried": self.retried,
        }
        result["generator_behind"] = result["send_lag_p99_ms"] > 2.0 or bool((self.statuses == NOT_SENT).any())
        return result


def settling_s(duration_s: float) -> float:
    """The warm-up an open-loop measurement of `duration_s` runs at its rate first (`open_loop`): a quarter
    of it, at most 2 s. An overload run may leave the server an aftermath (connections closing, a
    backlog, a garbage collection), which can weigh on the p99 of a 10 s window right after it."""
    return min(2.0, duration_s / 4)


async def open_loop(
    host: str,
    port: int,
    requests: bytes | list[bytes],
    rate: float,
    duration_s: float,
    poisson: bool = True,
    seed: int = 0,
    timeout_s: float = 30.0,
    max_connections: int = 512,
    warmup_s: float = 0.0,
) -> OpenLoopResult:
    """Send at `rate`/s (Poisson or constant spacing) whatever the server does: each request goes out at
    its scheduled time on an idle keep-alive connection (a new one when all are busy; a few are opened
    before the schedule starts), and its latency counts from that schedule. The schedule runs for
    `warmup_s` before the `duration_s` it reports on: requests due in the warm-up are sent and answered
    but left out of the result, so what the server was still doing from before (a backlog, a collection,
    connections closing) is not measured as this rate's."""
    requests = [requests] if isinstance(requests, bytes) else list(requests)
    rng = np.random.default_rng(seed)
    count = max(1, int(rate * (warmup_s + duration_s)))
    gaps = rng.exponential(1.0 / rate, count) if poisson else np.full(count, 1.0 / rate)
    scheduled = np.cumsum(gaps) - gaps[0]
    sent = np.zeros(count)
    completed = np.zeros(count)
    statuses = np.zeros(count, dtype=int)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    # Connections opened before the schedule starts, so the first requests do not pay for the handshakes
    # (about 20 ms of requests in flight at the offered rate, at least 4).
    opened = await asyncio.gather(
        *(asyncio.open_connection(host, port) for _ in range(min(max_connections, max(4, int(rate * 0.02))))),
        return_exceptions=True,
    )
    idle += [c for c in opened if not isinstance(c, BaseException)]
    open_connections = len(idle)
    retried = 0
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def one(i: int) -> None:
        nonlocal open_connections, retried
        connection = idle.pop() if idle else None
        if connection is None:
            if open_connections >= max_connections:
                sent[i] = completed[i] = loop.time() - start
                statuses[i] = NOT_SENT  # the generator's own connection limit: not the server's doing
                return
            open_connections += 1
        sent[i] = loop.time() - start
        try:
            status, connection, again = await asyncio.wait_for(
                _exchange(host, port, connection, requests[i % len(requests)]), timeout_s
            )
        except asyncio.TimeoutError:
            if connection is not None:
                connection[1].close()
            status, connection, again = 0, None, False
        completed[i] = loop.time() - start
        statuses[i] = status
        retried += bool(again and scheduled[i] >= warmup_s)
        if connection is None:
            open_connections -= 1
        else:
            idle.append(connection)

    tasks = []
    for i, due in enumerate(scheduled):
        delay = start + due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    kept = scheduled >= warmup_s if warmup_s else slice(None)
    if warmup_s and not kept.any():
        kept = slice(-1, None)  # a schedule shorter than its warm-up: its last request stands for it
    return OpenLoopResult(
        rate, scheduled[kept] - warmup_s, sent[kept] - warmup_s, completed[kept] - warmup_s, statuses[kept], retried
    )
