"""`python -m benchmarks overhead --no-baseline`, tiny windows, on a port of its own beside the session's
server: the replica's CPU per request and its components come out positive and plausible for every workload,
the Ray Serve floor served beside it answers every request, and `report` renders the section. (The figures
themselves are `make bench`'s business.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.overhead import WORKLOADS
from tests.conftest import ROOT
from tests.fixtures.ports import free_port, haproxy_ports

pytestmark = [pytest.mark.slow]


def test_overhead_measures_every_workload_and_report_renders_it(built_repository, tmp_path):
    results = tmp_path / "results"
    command = ["--no-baseline", "--window", "1", "--pairs", "1", "--port", str(free_port())]
    command += ["--repository", str(built_repository), "--results", str(results)]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "overhead", *command],
        cwd=ROOT,
        env={**os.environ, **haproxy_ports(), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((results / "overhead.json").read_text())
    assert report["baseline"] is None and set(report["idle_cpu_ms_per_s"]) == {"current"}
    engine = report["engine_cpu_ms_per_call"]
    assert 0 < engine["cnn"] < 50 and 0 < engine["minilm"] < 500, engine
    for workload in WORKLOADS:
        entry = report["workloads"][workload.name]
        (window,) = entry["windows"]
        assert window["statuses"] == {"200": window["requests"]}, window
        assert window["achieved_rps"] >= 0.5 * workload.rate, window
        # The replica does at least a good part of the engine's work per request (batching can make a row
        # cheaper than a batch-1 call), and not a hundred times more.
        assert 0.3 < entry["arms"]["current"]["cpu_vs_engine"] < 100, window
        assert 0 < window["engine_ms_per_request"] < window["cpu_ms_per_request"] * 3, window
        assert window["rows_per_engine_call"] >= 1 and 0 < window["p50_ms"] <= window["p99_ms"], window
        assert entry["vs_baseline"] is None
        # Ray Serve alone, beside it behind the same ingress: every request answered, at some CPU each.
        (floor,) = entry["floor"]["windows"]
        assert floor["statuses"] == {"200": sum(floor["statuses"].values())} and floor["achieved_rps"] > 0, floor
        assert 0 < entry["floor"]["cpu_ms_per_request"] < 100, floor

    output = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "report", "--results", str(results), "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text = output.read_text()
    assert "## Overhead: what a request costs the replica" in text and "| Ray Serve floor ms |" in text
