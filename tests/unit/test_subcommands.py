"""`trtserve capacity ...` and its `python -m benchmarks` aliases: one set of subcommands, registered twice."""

from __future__ import annotations

import json

import pytest

from benchmarks.__main__ import main as benchmarks_main
from runtime.capacity.subcommands import SUBCOMMANDS
from runtime.cli import main as trtserve_main

SEVEN = ("profile", "calibrate", "simulate", "plan", "validate", "load", "pack")


def test_trtserve_capacity_help_lists_the_seven_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        trtserve_main(["capacity", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"{{{','.join(SEVEN)}}}" in out
    assert tuple(SUBCOMMANDS) == SEVEN


def _profile(results):
    (results / "profile-cnn.json").write_text(
        json.dumps({"opt_sizes": {"batch": 1}, "points": [{"batch": 1, "sizes": {"batch": 1}, "median_ms": 1.0}]})
    )


@pytest.mark.parametrize("main", [trtserve_main, benchmarks_main], ids=["trtserve capacity", "python -m benchmarks"])
def test_plan_without_a_calibration_says_what_to_run_under_either_name(main, tmp_path):
    _profile(tmp_path)
    argv = ["plan", "--model", "cnn", "--rate", "50", "--slo-p99-ms", "100", "--results", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        main(["capacity", *argv] if main is trtserve_main else argv)
    assert "run `trtserve capacity calibrate --model cnn`" in str(exit_.value.code)


def test_simulate_one_configuration_from_the_stored_profile(tmp_path, capsys):
    _profile(tmp_path)
    argv = ["capacity", "simulate", "--model", "cnn", "--rate", "100", "--max-batch-size", "1"]
    assert trtserve_main([*argv, "--http-overhead-ms", "0.5", "--results", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "simulate-cnn.json").read_text())
    # The slower of the engine (1 ms a one-row call: 1000 req/s) and the event loop (0.5 ms a request), which
    # run side by side; a request takes both, 1.5 ms, at least.
    assert report["capacity_rps"] == 1000.0
    assert 1.5 <= report["p50_ms"] <= report["p99_ms"] and report["rows_per_engine_call"] == 1
    assert "written to" in capsys.readouterr().out


def test_a_profile_that_is_not_there_says_which_command_writes_it(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        trtserve_main(["capacity", "calibrate", "--model", "cnn", "--results", str(tmp_path)])
    assert "run `trtserve capacity profile` for cnn first" in str(exit_.value.code)
