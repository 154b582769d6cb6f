"""`trtserve capacity load` and `python -m benchmarks generator` smoke runs against the trivial endpoint,
tiny durations; the CLI's errors for what is missing."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from benchmarks import trivial_server
from tests.conftest import ROOT


def run_benchmarks(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return _run("benchmarks", *args, timeout=timeout)


def run_capacity(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`trtserve capacity ARGS...` (the console script's module, in this interpreter)."""
    return _run("runtime.cli", "capacity", *args, timeout=timeout)


def _run(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_load_cli_writes_json_and_csv(tmp_path):
    body = tmp_path / "body.json"
    body.write_text("{}")
    with trivial_server.in_subprocess() as port:
        proc = run_capacity(
            "load",
            "--url",
            f"http://127.0.0.1:{port}",
            "--model",
            "toy",
            "--body",
            body,
            "--concurrency",
            "2",
            "--rate",
            "200",
            "--window",
            "1",
            "--results",
            tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "load-toy.json").read_text())
    closed, opened = report["points"]
    assert closed["concurrency"] == 2 and closed["statuses"] == {"200": closed["statuses"]["200"]}
    assert opened["rate"] == 200 and 150 < opened["throughput"] < 250
    with open(tmp_path / "load-toy.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and rows[1]["Request Rate"] == "200.0"


def test_generator_check_runs(tmp_path):
    proc = run_benchmarks("generator", "--rate", "300", "--duration", "1", "--results", tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "generator.json").read_text())
    assert report["statuses"] == {"200": report["requests"]}


def test_plan_without_a_calibration_says_what_to_run(tmp_path):
    (tmp_path / "profile-cnn.json").write_text(
        json.dumps({"opt_sizes": {"batch": 1}, "points": [{"batch": 1, "sizes": {"batch": 1}, "median_ms": 1.0}]})
    )
    proc = run_capacity("plan", "--model", "cnn", "--rate", "50", "--slo-p99-ms", "100", "--results", tmp_path)
    assert proc.returncode != 0
    assert "trtserve capacity calibrate --model cnn" in proc.stderr and "Traceback" not in proc.stderr
