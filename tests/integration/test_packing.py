"""`trtserve capacity pack` on this machine's host memory: the replicas that fit are derived from the measured
footprint and that many run at once (the GPU run of the same command is in test_gpu_memory.py's marker)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def _pack(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "runtime.cli", "capacity", "pack", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_pack_runs_the_replicas_that_fit(built_repository, tmp_path):
    proc = _pack(
        "--model", "cnn", "--repository", built_repository, "--max-replicas", 2, "--duration", 1, "--results", tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "pack-cnn.json").read_text())
    assert report["resource"] == "host" and report["failures"] == []
    need = report["need"]["host_bytes"]
    assert report["actor_options"]["memory"] >= need * 1.2
    assert report["replicas_fit"] >= 2 and report["replicas_run"] == 2
    assert len(report["workers"]) == 2
    assert all(w["calls"] > 0 and w["rows_per_s"] > 0 for w in report["workers"])
    assert report["rows_per_s_total"] == round(sum(w["rows_per_s"] for w in report["workers"]), 1)
    assert "ran 2: 2 finished" in proc.stdout


def test_pack_refuses_a_model_it_does_not_know(built_repository, tmp_path):
    proc = _pack("--model", "nope", "--repository", built_repository, "--results", tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "nope" in proc.stderr
