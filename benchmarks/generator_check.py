"""Can the open-loop generator keep its schedule? Poisson arrivals at `rate` against the trivial
endpoint in another process; the issue's bar is >= 1500 requests/s with send-lag p99 < 2 ms."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from benchmarks import machine, trivial_server
from benchmarks.http_load import build_request, open_loop


def run(results: Path, rate: float = 1500, duration_s: float = 10.0) -> dict:
    with trivial_server.in_subprocess() as port:
        request = build_request("127.0.0.1", port, "/", b"{}", {"Content-Type": "application/json"})
        summary = asyncio.run(open_loop("127.0.0.1", port, request, rate, duration_s)).summary()
    report = {"benchmark": "generator", "machine": machine.describe(), "duration_s": duration_s, **summary}
    results.mkdir(parents=True, exist_ok=True)
    (results / "generator.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
