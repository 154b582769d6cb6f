"""`trtserve gpu-check` (`make gpu-check`) end to end on the machine the suite runs on: without a GPU, every step
skipped and named."""

import subprocess
import sys

import pytest

from runtime.diagnostics.gpu_check import STEPS
from runtime.engine.cuda_device import visible_device
from tests.conftest import ROOT


@pytest.mark.skipif(visible_device()[0] is not None, reason="this machine has a GPU: make gpu-check runs its steps")
def test_gpu_check_without_a_gpu_skips_every_step(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "gpu-check", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == [f"SKIP {step.name}" for step in STEPS]
    assert all(line.split(": ", 1)[1] for line in lines)  # each with its reason
    assert list(tmp_path.iterdir()) == []
