"""The trtserve application the auth-cost benchmark runs: the real deployment with bearer tokens, whose
token check a benchmark can switch off and on again between windows (`POST /bench/auth` with `on` or
`off`), so both arms of the comparison run on one replica process. Two replicas, one with tokens and one
without, differed by more than the 3 % under test on this 2-core machine (the secured one faster in 12 of
16 pairs), whatever the order of the windows.

The check is also timed where it runs: `GET /bench/auth` answers how many checks ran, the nanoseconds they
took (two clock reads each included) and the thread they ran on (Ray runs a replica's requests on an event
loop in a thread of its own, not the process's main thread), so the cost per request can be set against
that thread's CPU time per request.

A benchmark fixture, not a way to serve: the switch route is open (import_path
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
from runtime.serve.deployment import KServeServer

SWITCH = "/bench/auth"


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

    class AuthToggleServer(KServeServer.func_or_class):
        async def __call__(self, request: Request) -> Response:
            if request.url.path.endswith(SWITCH):
                return self._switch(request.method, (await request.body()).decode().strip())
            return await super().__call__(request)

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
