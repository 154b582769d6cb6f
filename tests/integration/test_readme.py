"""The README's worked example runs as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

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
