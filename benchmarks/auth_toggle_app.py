"""The trtserve application the auth-cost benchmark runs: the real deployment with bearer tokens, whose
token check a benchmark can switch off and on again between windows (`POST /bench/auth` with `on` or
`off`), so both arms of the comparison run on one replica process. Two replicas, one with tokens and one
without, differed by more than the 3 % under test on this 2-core machine (the secured one faster in 12 of
16 pairs), whatever the order of the windows.

The check is also timed where it runs: `GET /bench/auth` answers how many checks ran, the nanoseconds they
took (two clock reads each included) and the thread they ran on (Ray runs a replica's requests on an event
loop in a thread of its own, not the process's main thread), so the cost per request can be set against
that thread's CPU time per request.

The request path's hardening (issue 30) is switched the same way (`POST /bench/hardening`, `on` or `off`):
off, a request's body is read whole before anything else (as `request.body()` did) and decoded with no check
against the model first; on, it is the production path (runtime.serve.body, `ServedModel.admit` before any
decoding, large requests decoded off the event loop).

A benchmark fixture, not a way to serve: the switch routes are open (import_path
benchmarks.auth_toggle_app:build_app).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from runtime.auth.tokens import TokenTable, Verdict
from runtime.serve import app
from runtime.serve.deployment import ModelServer, _ray_request_id, app_path
from runtime.serve.protocol import decode_request

SWITCH = "/bench/auth"
HARDENING_SWITCH = "/bench/hardening"


class TimedTokenTable:
    """A token table whose checks are counted and timed."""

    def __init__(self, table: TokenTable) -> None:
        self.table = table
        self.checks = 0
        self.check_ns = 0
        self.thread_id: int | None = None  # the native id of the thread the checks run on (the replica's loop)

    def check(self, authorization: str | None, scope: str) -> Verdict:
        start = time.perf_counter_ns()
        verdict = self.table.check(authorization, scope)
        self.check_ns += time.perf_counter_ns() - start
        self.checks += 1
        if self.thread_id is None:
            self.thread_id = threading.get_native_id()
        return verdict


def build_app(args: dict[str, Any]) -> serve.Application:
    if not args.get("auth"):
        raise ValueError("the auth-cost benchmark's application needs auth: {tokens_file: ...}")

    class AuthToggleServer(ModelServer.func_or_class):
        async def __call__(self, request: Request) -> Response:
            if request.url.path.endswith(SWITCH):
                return self._switch(request.method, (await request.body()).decode().strip())
            if request.url.path.endswith(HARDENING_SWITCH):
                return self._harden((await request.body()).decode().strip())
            if getattr(self, "_plain", False):
                return await self._plain_call(request)
            return await super().__call__(request)

        async def _plain_call(self, request: Request) -> Response:
            """The request path without its hardening: the body read whole first, as it was."""
            body = await request.body()
            request_id = _ray_request_id()
            result = await self.handler.handle(
                request.method, app_path(request.scope), request.headers, body, request_id
            )
            if request_id:
                result.headers.pop("x-request-id", None)
            return Response(result.body, status_code=result.status, headers=result.headers)

        def _harden(self, state: str) -> Response:
            if state not in ("on", "off"):
                return Response(f"expected on or off, got {state!r}", status_code=400)
            self._plain = state == "off"
            if self._plain:
                self.handler._prepare = _plain_prepare  # no check against the model before decoding
            else:
                self.handler.__dict__.pop("_prepare", None)
            return Response(state)

        def _use_tokens(self, table: TokenTable) -> None:
            # The tokens file's watcher: a new table goes under the timer, and never turns the check back on.
            if hasattr(self, "_timed"):
                self._timed.table = table
            else:
                super()._use_tokens(table)

        def _switch(self, method: str, state: str) -> Response:
            if not hasattr(self, "_timed"):
                self._timed = TimedTokenTable(self.handler.auth)  # the table the app was built with
                self.handler.auth = self._timed
            if method == "GET":
                timed = self._timed
                doc = {"checks": timed.checks, "check_ns": timed.check_ns, "thread_id": timed.thread_id}
                return Response(json.dumps(doc))
            if state not in ("on", "off"):
                return Response(f"expected on or off, got {state!r}", status_code=400)
            self.handler.auth = self._timed if state == "on" else None
            return Response(state)

    return app.build_app_with(args, serve.deployment(name="trtserve")(AuthToggleServer))


def _plain_prepare(model, mirror, body, header_length, request_id, reroute):
    """Decode first, check after (`ServedModel.feed_from`'s signature check), on the event loop."""
    request = decode_request(body, header_length)
    if reroute is not None and request.id is not None and request.id != request_id:
        model, mirror = reroute(request.id)
    return model, mirror, request, model.feed_from(request)
