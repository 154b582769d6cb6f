"""TensorRT engines end to end. Needs TensorRT and an NVIDIA GPU: skipped elsewhere, saying which."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_convert

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_cnn_tensorrt_engines_pass_parity_and_check(tmp_path):
    proc = run_convert("build", "configs/models/cnn.yaml", "--repository", tmp_path, "--backend", "tensorrt")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "cnn/1/manifest.json").read_text())
    plans = [e for e in manifest["engines"] if e["backend"] == "tensorrt"]
    assert {e["precision"] for e in plans} == {"fp32", "fp16"}
    for entry in plans:
        assert entry["file"].startswith("engines/") and entry["file"].endswith(".plan")
        assert (tmp_path / "cnn/1" / entry["file"]).is_file()
    assert all(p["passed"] for p in manifest["parity"])
    proc = run_convert("check", tmp_path / "cnn/1")
    assert proc.returncode == 0 and "tensorrt" in proc.stdout


def test_load_engine_prefers_a_matching_plan(tmp_path):
    from runtime import load_engine

    assert run_convert("build", "configs/models/cnn.yaml", "--repository", tmp_path).returncode == 0
    with load_engine(tmp_path / "cnn/1") as engine:
        assert engine.backend == "tensorrt" and engine.device == "cuda:0"
