"""The README's worked example runs as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def worked_example_blocks() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Worked example", 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    return shell, python


def test_worked_example_runs(tmp_path):
    shell, python = worked_example_blocks()
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
    }
    for line in shell.splitlines():
        command = line.split("#", 1)[0].strip()
        if not command:
            continue
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr)
    proc = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "(2, 10)" in proc.stdout


@pytest.mark.slow
def test_remote_repository_example_runs(tmp_path):
    """The S3 example as written, against moto's S3 server (its `export` line is this test's environment)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.s3_server import s3_server

    text = (ROOT / "README.md").read_text()
    section = text.split("## Remote repositories: S3 and GCS", 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    x = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    table = pa.table({"id": [f"i{i}" for i in range(16)], "image": pa.FixedShapeTensorArray.from_numpy_ndarray(x)})
    pq.write_table(table, tmp_path / "images.parquet")
    with s3_server() as s3:
        s3.bucket("models")
        env = {
            **os.environ,
            **s3.env,
            "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "TRTSERVE_CACHE": str(tmp_path / "cache"),
        }
        env.pop("RAY_ADDRESS", None)
        outputs = []
        for line in shell.splitlines():
            command = line.split("#", 1)[0].strip()
            if not command or command.startswith("export "):
                continue
            proc = subprocess.run(
                command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
            )
            assert proc.returncode == 0, (command, proc.stderr[-3000:])
            outputs.append(proc.stdout)
    assert outputs[0].strip() == "s3://models/prod/cnn/1"
    assert pq.read_table(tmp_path / "predictions").num_rows == 16
