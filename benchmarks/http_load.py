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
    answered_rows = 0
    counter = iter(range(10**12))
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop = measure_from + duration_s

    async def worker() -> None:
        nonlocal answered_rows
        writer = None
        while True:
            sent = time.perf_counter()
            if sent >= stop:
                break
            index = next(counter) % len(requests)
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(requests[index])
                status, _ = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError):
                status = 0  # connection refused or dropped: counted, then reconnect
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.01)
            done = time.perf_counter()
            if sent >= measure_from:
                latencies.append((done - sent) * 1e3)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    answered_rows += rows[index]
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = max(time.perf_counter(), stop) - measure_from
    return LoadResult(
        concurrency, min(seconds, duration_s + 0.5), len(latencies), statuses, np.array(latencies), answered_rows
    )


@dataclass
class OpenLoopResult:
    """Per request: when it was due, when it went out, when it came back, and how it ended."""

    rate: float
    scheduled: np.ndarray  # seconds from the start
    sent: np.ndarray
    completed: np.ndarray
    statuses: np.ndarray  # 0: connection error or timeout

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
        }
        result["generator_behind"] = result["send_lag_p99_ms"] > 2.0
        return result


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
) -> OpenLoopResult:
    """Send at `rate`/s (Poisson or constant spacing) whatever the server does: each request goes out at
    its scheduled time on an idle keep-alive connection (a new one when all are busy; a few are opened
    before the schedule starts), and its latency counts from that schedule."""
    requests = [requests] if isinstance(requests, bytes) else list(requests)
    rng = np.random.default_rng(seed)
    count = max(1, int(rate * duration_s))
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
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def one(i: int) -> None:
        nonlocal open_connections
        connection = idle.pop() if idle else None
        try:
            if connection is None:
                if open_connections >= max_connections:
                    raise OSError("connection limit reached")
                open_connections += 1
                connection = await asyncio.open_connection(host, port)
            reader, writer = connection
            sent[i] = loop.time() - start
            writer.write(requests[i % len(requests)])
            status, _ = await asyncio.wait_for(_read_response(reader), timeout_s)
            completed[i] = loop.time() - start
            statuses[i] = status
            idle.append(connection)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            completed[i] = loop.time() - start
            if not sent[i]:
                sent[i] = completed[i]
            if connection is not None:
                connection[1].close()
                open_connections -= 1

    tasks = []
    for i, due in enumerate(scheduled):
        delay = start + due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return OpenLoopResult(rate, scheduled, sent, completed, statuses)
