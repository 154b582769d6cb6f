"""`python -m benchmarks profile | validate | plan | report` against the session's server, tiny durations:
the capacity-planning path runs end to end and writes what it promises. (The figures themselves are
`make bench`'s business.)"""

from __future__ import annotations

import json

from tests.integration.test_load_cli import run_benchmarks


def test_validate_then_plan_then_report(server, built_repository, tmp_path):
    results = tmp_path / "results"
    proc = run_benchmarks(
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
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((results / "cnn" / "validate.json").read_text())
    for side in ("predicted", "measured"):
        assert report[side]["max_rps"] > 0 and report[side]["p99_ms"] > 0, report[side]
    assert report["measured"]["statuses"] == {"200": sum(report["measured"]["statuses"].values())}
    assert report["http"]["per_request_ms"] > 0 and report["http"]["engine_slowdown"] >= 1
    # The p99 is predicted from the calibration rounds taken before the pooled windows, one each.
    assert report["http_during_p99"]["pooled"] == min(3, report["measured"]["windows"])
    # Each window predicted from the round before it (one a window), and the pooled ones' p99 from theirs.
    assert len(report["predicted"]["window_p99_ms"]) == report["measured"]["windows"]
    assert min(report["predicted"]["window_p99_ms"][-3:]) <= report["predicted"]["p99_ms"]
    assert report["predicted"]["p99_ms"] <= max(report["predicted"]["window_p99_ms"][-3:])
    assert report["predicted"]["p99_ms_pooled_rounds"] > 0
    rounds = json.loads((results / "cnn" / "rounds-cnn.json").read_text())
    assert len(rounds) == report["measured"]["windows"] and all(r["floor_samples_ms"] for r in rounds)
    assert report["predicted"]["p99_ms_first_calibration"] > 0
    assert report["measured"]["rows_per_engine_call"] >= 1 and report["predicted"]["rows_per_engine_call"] >= 1
    pngs = sorted(p.name for p in (results / "cnn").glob("*.png"))
    assert pngs == ["cnn-latency-cdf.png", "cnn-latency-vs-batch.png", "cnn-throughput-vs-p99.png"]
    assert all((results / "cnn" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    proc = run_benchmarks("profile", built_repository / "cnn" / "1", "--repeats", "3", "--results", results / "cnn")
    assert proc.returncode == 0, proc.stderr
    proc = run_benchmarks(
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
    assert json.loads((results / "cnn" / "plan-cnn.json").read_text())["plan"]["replicas"] == 1

    output = tmp_path / "RESULTS.md"
    proc = run_benchmarks("report", "--results", results, "--output", output)
    assert proc.returncode == 0, proc.stderr
    text = output.read_text()
    assert "## Capacity planning: predicted vs measured" in text
    assert "![cnn-throughput-vs-p99](plots/cnn-throughput-vs-p99.png)" in text
    assert (tmp_path / "plots" / "cnn-latency-cdf.png").exists()


def test_plan_without_a_calibration_says_what_to_run(tmp_path):
    (tmp_path / "profile-cnn.json").write_text(
        json.dumps({"opt_sizes": {"batch": 1}, "points": [{"batch": 1, "sizes": {"batch": 1}, "median_ms": 1.0}]})
    )
    proc = run_benchmarks("plan", "--model", "cnn", "--rate", "50", "--slo-p99-ms", "100", "--results", tmp_path)
    assert proc.returncode != 0
    assert "benchmarks calibrate --model cnn" in proc.stderr and "Traceback" not in proc.stderr
