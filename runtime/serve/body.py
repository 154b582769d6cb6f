"""Request bodies read against a limit, chunk by chunk, after the request was admitted.

A body is never read before the handler knows its route and has checked the caller's token, and never past
its route's limit: a declared Content-Length above the limit is refused before a byte is read, and a chunked
body is refused as soon as the running count passes it. The bytes every request of a replica holds at once
are bounded too (`BodyBudget`): past that, a request is told 503 and to retry, rather than the replica
growing until it is killed for its memory. What a request holds is its chunks, at most its limit plus the
one being read, joined once at the end (a body of one chunk is handed on as it came). A body must also keep
coming: a client that sends nothing for IDLE_S, or less than MIN_RATE after GRACE_S, is answered 408, so a
slow sender cannot hold a share of the budget for long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

FEEDBACK_LIMIT = 8 << 20  # 10,000 labels of a few hundred bytes each
SMALL_LIMIT = 64 << 10  # a rollout command (routes that take no body never read one)
IDLE_S = 10.0  # the longest wait for the body's next chunk
GRACE_S = 5.0  # then at least MIN_RATE on average
MIN_RATE = 256 << 10  # bytes a second: a 64 MiB body in about 4 minutes at worst


class BodyTooLarge(Exception):
    """A body over its route's limit (413)."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"of {declared} bytes " if declared is not None else ""
        super().__init__(f"request body {size}exceeds the limit of {limit} bytes for this route")
        self.limit = limit


class BodyIncomplete(Exception):
    """The client went away before its whole body came (400, for the log: nobody reads the answer)."""


class BodyTooSlow(Exception):
    """A body that stopped coming, or came too slowly (408)."""


class BodiesInFlightFull(Exception):
    """The replica holds as many body bytes as it may at once (503, retry)."""


class BodyBudget:
    """The bytes of request bodies a replica holds at once. One event loop owns it: no lock."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.max_bytes:
            raise BodiesInFlightFull(
                f"this replica holds {self.held} bytes of request bodies, its limit is {self.max_bytes}; retry shortly"
            )
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size


class Body:
    """A request's body, not yet read: `read(limit)` returns it whole, or raises BodyTooLarge /
    BodiesInFlightFull having read no more than the limit and one chunk. Whatever it took from the budget
    is given back by `release()` (the deployment calls it once the response is built)."""

    def __init__(
        self,
        chunks: Callable[[], AsyncIterator[bytes]],
        declared: str | None = None,  # the Content-Length header, as sent
        budget: BodyBudget | None = None,
    ) -> None:
        self._chunks = chunks
        self._declared = declared
        self._budget = budget
        self._taken = 0

    async def read(self, limit: int) -> bytes:
        declared = _declared_length(self._declared)
        if declared is not None and declared > limit:
            raise BodyTooLarge(limit, declared)
        chunks: list[bytes] = []
        received = 0
        if declared == 0:
            return b""
        idle = _IdleTimer(IDLE_S)
        started = 0.0  # when the first chunk came: the rate is measured from there
        try:
            async for chunk in self._chunks():
                idle.restart()  # from the first chunk on: before it, nothing of the budget is held
                if received + len(chunk) > limit:
                    raise BodyTooLarge(limit)
                if self._budget is not None:
                    self._budget.take(len(chunk))
                    self._taken += len(chunk)
                chunks.append(chunk)
                received += len(chunk)
                if declared is not None and received >= declared:
                    break  # whole: its end is not waited for
                started = started or time.monotonic()
                elapsed = time.monotonic() - started
                if elapsed > GRACE_S and received < MIN_RATE * (elapsed - GRACE_S):
                    raise BodyTooSlow(
                        f"the request body came at {received / elapsed / 1024:.0f} KiB/s; at least "
                        f"{MIN_RATE >> 10} KiB/s is needed"
                    )
        except asyncio.CancelledError:
            if idle.expired():
                raise BodyTooSlow(f"no part of the request body came for {IDLE_S:g} s") from None
            raise
        finally:
            idle.stop()
        # One buffer, handed on as it is (orjson parses bytes faster than a bytearray: 93 us against 115 us
        # for a cnn request); a body of several chunks is joined once, briefly holding it twice.
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def release(self) -> None:
        if self._budget is not None and self._taken:
            self._budget.give_back(self._taken)
            self._taken = 0


class BufferedBody:
    """A body already in memory (tests, and callers that have it whole): `Body`'s `read` and `release`,
    nothing to wait for and nothing taken from a budget."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, limit: int) -> bytes:
        if len(self._data) > limit:
            raise BodyTooLarge(limit, len(self._data))
        return self._data

    def release(self) -> None:
        pass


class _IdleTimer:
    """Cancels the task that runs it when `seconds` pass without a restart: one timer handle for a whole
    body (a per-chunk asyncio.wait_for costs a task each: a read of two chunks took 36 us that way, 22 us
    this way, here)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def restart(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_later(self._seconds, self._expire)

    def expired(self) -> bool:
        """Whether the cancellation was this timer's (then it is taken back: the task goes on)."""
        if self._expired and hasattr(self._task, "uncancel"):
            self._task.uncancel()
        return self._expired

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def _declared_length(value: str | None) -> int | None:
    """Content-Length as an integer; one that is not a number is left to the server (which refuses it) and
    the running count."""
    if value is None or not value.isdigit():
        return None
    return int(value)
