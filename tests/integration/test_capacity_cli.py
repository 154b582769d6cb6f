"""`trtserve capacity validate | profile | plan | simulate`, then `python -m benchmarks report`, against the
session's server, tiny durations:
the capacity-planning path runs end to end and writes what it promises. (The figures themselves are
`make bench`'s business.) Slow tier: minutes of the machine, and a bound on them that holds when it is
busy."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_load_cli import run_benchmarks, run_capacity

pytestmark = [pytest.mark.slow]


def test_validate_then_plan_then_report(server, built_repository, tmp_path):
    results = tmp_path / "results"
    proc = run_capacity(
        "validate",
        "--model",
        "cnn",
        "--slo-p99-ms",
        "500",
        "--url",
        server.url,
        "--repository",
        built_repository,
        "--window",
        "1",
        "--results",
        results / "cnn",
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((results / "cnn" / "validate.json").read_text())
    for side in ("predicted", "measured"):
        assert report[side]["max_rps"] > 0 and report[side]["p99_ms"] > 0, report[side]
    assert report["measured"]["statuses"] == {"200": sum(report["measured"]["statuses"].values())}
    http = report["http"]
    assert http["per_request_ms"] > 0 and http["engine_slowdown"] >= 1 and len(http["stalls"]) == 3
    assert json.loads((results / "cnn" / "http-cnn.json").read_text())["floor_samples_ms"]
    assert 3 <= report["measured"]["windows"] <= 6 and len(report["measured"]["window_p99_ms"]) >= 3
    assert report["measured"]["rows_per_engine_call"] >= 1 and report["predicted"]["rows_per_engine_call"] >= 1
    assert set(report["met"]) == {"max_rps", "p99_ms"}

    proc = run_capacity("profile", built_repository / "cnn" / "1", "--repeats", "3", "--results", results / "cnn")
    assert proc.returncode == 0, proc.stderr
    proc = run_capacity(
        "plan",
        "--model",
        "cnn",
        "--rate",
        "50",
        "--slo-p99-ms",
        "500",
        "--max-replicas",
        "1",
        "--results",
        results / "cnn",
    )
    assert proc.returncode == 0, proc.stderr
    assert "replica(s), max_batch_size" in proc.stdout
    plan = json.loads((results / "cnn" / "plan-cnn.json").read_text())["plan"]
    assert plan["replicas"] == 1

    proc = run_capacity(
        "simulate",
        "--model",
        "cnn",
        "--rate",
        "50",
        "--max-batch-size",
        plan["max_batch_size"],
        "--max-queue-delay-ms",
        plan["max_queue_delay_ms"],
        "--results",
        results / "cnn",
    )
    assert proc.returncode == 0, proc.stderr
    simulated = json.loads((results / "cnn" / "simulate-cnn.json").read_text())
    assert 0 < simulated["p50_ms"] <= simulated["p99_ms"] and simulated["rows_per_engine_call"] >= 1

    output = tmp_path / "RESULTS.md"
    proc = run_benchmarks("report", "--results", results, "--output", output)
    assert proc.returncode == 0, proc.stderr
    text = output.read_text()
    assert "## Capacity planning: predicted vs measured" in text
    assert "![cnn-throughput-vs-p99](plots/cnn-throughput-vs-p99.png)" in text
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["cnn-latency-cdf.png", "cnn-latency-vs-batch.png", "cnn-throughput-vs-p99.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
