"""`python -m benchmarks load` and `generator` smoke runs against the trivial endpoint, tiny durations."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time

from tests.conftest import ROOT


def _start_trivial_server() -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.trivial_server", str(port)], cwd=ROOT)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("trivial server did not start")


def test_load_cli_writes_json_and_csv(tmp_path):
    server, port = _start_trivial_server()
    body = tmp_path / "body.json"
    body.write_text("{}")
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks",
                "load",
                "--url",
                f"http://127.0.0.1:{port}",
                "--model",
                "toy",
                "--body",
                str(body),
                "--concurrency",
                "2",
                "--rate",
                "200",
                "--window",
                "1",
                "--results",
                str(tmp_path),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.terminate()
        server.wait()
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "load-toy.json").read_text())
    closed, opened = report["points"]
    assert closed["concurrency"] == 2 and closed["statuses"] == {"200": closed["statuses"]["200"]}
    assert opened["rate"] == 200 and 150 < opened["throughput"] < 250
    with open(tmp_path / "load-toy.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[1]["Request Rate"] == "200.0"


def test_generator_check_runs(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "generator",
            "--rate",
            "300",
            "--duration",
            "1",
            "--results",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "generator.json").read_text())
    assert report["statuses"] == {"200": report["requests"]}
