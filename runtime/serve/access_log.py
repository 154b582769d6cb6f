"""Which answered inference requests get a log line (the application's `logging:` args).

A JSON line through a replica's log handlers costs tens of microseconds of the CPU that serves requests
(runtime.serve.replica_log), and the metrics count every request anyway: by default a line is written for
every error, every slow request and a share of the rest. The share is taken by a running credit, not a
random draw: with `sample_percent: 1` exactly one request in a hundred, the hundredth first.
"""

from __future__ import annotations

from runtime.serve.app_args import RequestLogging

_SHARES = {"all": 100.0, "errors": 0.0}  # percent of the requests neither errors nor slow; sampled: its own
_WHOLE = 1_000_000  # the credit counts millionths of a request: integers, so 0.1 % is exactly 1 in 1000


class AccessLog:
    """The decision, request by request; called from the event loop only (its credit is not locked)."""

    def __init__(self, settings: RequestLogging | None = None) -> None:
        settings = settings or RequestLogging()
        self.settings = settings
        self._share = round(_SHARES.get(settings.requests, settings.sample_percent) * _WHOLE / 100)
        self._slow_s = settings.slow_ms / 1e3
        self._credit = 0

    def wants(self, status: int, seconds: float) -> bool:
        """Whether the request answered `status` after `seconds` gets a line."""
        if status >= 400 or seconds > self._slow_s:
            return True
        self._credit += self._share
        if self._credit < _WHOLE:
            return False
        self._credit -= _WHOLE
        return True
