"""Can the open-loop generator keep its schedule? Poisson arrivals at `rate` against the trivial
endpoint in another process; the issue's bar is >= 1500 requests/s with send-lag p99 < 2 ms."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import machine
from benchmarks.http_load import build_request, open_loop


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(results: Path, rate: float = 1500, duration_s: float = 10.0) -> dict:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.trivial_server", str(port)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        request = build_request("127.0.0.1", port, "/", b"{}", {"Content-Type": "application/json"})
        summary = asyncio.run(open_loop("127.0.0.1", port, request, rate, duration_s)).summary()
    finally:
        server.terminate()
        server.wait()
    report = {"benchmark": "generator", "machine": machine.describe(), "duration_s": duration_s, **summary}
    results.mkdir(parents=True, exist_ok=True)
    (results / "generator.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
