"""Request bodies are read against their route's limit, chunk by chunk, and no further than the limit and one
chunk; a replica's bodies together are bounded in bytes."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime.serve import body as body_module
from runtime.serve.body import BodiesInFlightFull, Body, BodyBudget, BodyTooLarge, BodyTooSlow, BufferedBody

CHUNK = 64 << 10


class Stream:
    """A client's body: `total` bytes in CHUNK-sized chunks, made only as they are read."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0

    async def chunks(self):
        while self.sent < self.total:
            size = min(CHUNK, self.total - self.sent)
            self.sent += size
            yield b"x" * size


def read(body: Body, limit: int):
    return asyncio.run(body.read(limit))


def test_a_body_within_its_limit_is_read_whole():
    stream = Stream(3 * CHUNK + 5)
    assert len(read(Body(stream.chunks, None), 1 << 20)) == 3 * CHUNK + 5


def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read():
    stream = Stream(1 << 30)
    with pytest.raises(BodyTooLarge, match=r"request body of 1073741824 bytes exceeds the limit of 1048576"):
        read(Body(stream.chunks, str(1 << 30)), 1 << 20)
    assert stream.sent == 0


def test_a_chunked_body_is_refused_once_the_running_count_passes_the_limit():
    stream = Stream(1 << 30)  # no Content-Length: a gigabyte, chunked
    with pytest.raises(BodyTooLarge, match=r"exceeds the limit of 1048576 bytes"):
        read(Body(stream.chunks, None), 1 << 20)
    assert stream.sent <= (1 << 20) + CHUNK  # the limit and the chunk that passed it, never more


def test_a_body_is_read_no_further_than_its_declared_length():
    stream = Stream(1 << 30)  # a server frames the body by its Content-Length; this stream does not
    assert len(read(Body(stream.chunks, str(3 * CHUNK)), 1 << 20)) == 3 * CHUNK
    assert stream.sent == 3 * CHUNK  # nothing asked of the client past it, not even its end


class Trickle:
    """A client that sends `first` bytes at once, then `size`-byte chunks every `every_s`."""

    def __init__(self, first: int, size: int, every_s: float, chunks: int) -> None:
        self.first, self.size, self.every_s, self.count = first, size, every_s, chunks

    async def chunks(self):
        yield b"x" * self.first
        for _ in range(self.count):
            await asyncio.sleep(self.every_s)
            yield b"x" * self.size


def test_a_body_that_stops_coming_is_refused_and_gives_its_budget_back(monkeypatch):
    monkeypatch.setattr(body_module, "IDLE_S", 0.2)
    budget = BodyBudget(1 << 30)
    body = Body(Trickle(CHUNK, CHUNK, every_s=5.0, chunks=1).chunks, str(1 << 20), budget)
    with pytest.raises(BodyTooSlow, match=r"no part of the request body came for 0.2 s"):
        read(body, 1 << 20)
    body.release()
    assert budget.held == 0


def test_a_body_that_trickles_in_is_refused_after_its_grace(monkeypatch):
    monkeypatch.setattr(body_module, "GRACE_S", 0.3)
    body = Body(Trickle(CHUNK, 16, every_s=0.05, chunks=1000).chunks, None)  # 320 bytes a second
    started = time.monotonic()
    with pytest.raises(BodyTooSlow, match=r"at least 256 KiB/s is needed"):
        read(body, 1 << 30)
    assert time.monotonic() - started < 5.0


def test_a_body_sent_in_one_chunk_is_handed_on_as_it_came():
    chunk = b"x" * CHUNK

    async def one():
        yield chunk

    assert read(Body(one, str(CHUNK)), 1 << 20) is chunk  # not copied


def test_a_cancelled_read_is_not_taken_for_a_slow_body():
    async def never():
        await asyncio.sleep(3600)
        yield b""

    async def cancelled() -> None:
        task = asyncio.ensure_future(Body(never, None).read(1 << 20))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())


def test_the_replica_holds_a_bounded_number_of_body_bytes_and_gets_them_back():
    budget = BodyBudget(4 * CHUNK)
    first = Body(Stream(3 * CHUNK).chunks, None, budget)
    assert len(read(first, 1 << 20)) == 3 * CHUNK and budget.held == 3 * CHUNK
    second = Body(Stream(2 * CHUNK).chunks, None, budget)
    with pytest.raises(BodiesInFlightFull, match="retry shortly"):
        read(second, 1 << 20)
    second.release()
    first.release()
    assert budget.held == 0
    third = Body(Stream(4 * CHUNK).chunks, None, budget)
    assert len(read(third, 1 << 20)) == 4 * CHUNK
    third.release()
    third.release()  # twice is harmless
    assert budget.held == 0


def test_a_refused_body_gives_back_what_it_took():
    budget = BodyBudget(1 << 30)
    body = Body(Stream(1 << 30).chunks, None, budget)
    with pytest.raises(BodyTooLarge):
        read(body, 1 << 20)
    body.release()
    assert budget.held == 0


def test_a_buffered_body_keeps_to_the_limit_too():
    assert read(BufferedBody(b"abc"), 3) == b"abc"
    with pytest.raises(BodyTooLarge, match="request body of 4 bytes"):
        read(BufferedBody(b"abcd"), 3)
