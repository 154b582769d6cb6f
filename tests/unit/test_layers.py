"""The layers, as a user meets them: the engine layer runs without Ray, a web framework, torch or the
convert stage; and `make lint`'s import contracts catch an import that crosses a layer, naming the rule."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.fixtures.artifacts import sequence_model


def test_running_an_onnxruntime_engine_imports_no_ray_starlette_torch_or_convert(tmp_path):
    version = sequence_model(tmp_path / "seq" / "1")
    script = f"""
import sys
import numpy as np
from runtime import load_engine
with load_engine({str(version)!r}) as engine:
    engine.infer({{"x": np.ones((2, 3), np.float32)}})
print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"ray", "starlette", "torch", "convert", "benchmarks"}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # this tree's packages before the installed ones
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_import_across_the_layers_fails_lint_naming_the_rule(tmp_path):
    tree = tmp_path / "tree"
    for package in ("runtime", "convert", "benchmarks"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    assert _lint_imports(tree).returncode == 0  # the tree as it is keeps every contract

    with open(tree / "runtime/engine/dtypes.py", "a") as f:
        f.write("\nfrom runtime.serve import batch_formation  # noqa: E402, F401 - the engine layer reaching up\n")
    proc = _lint_imports(tree)
    assert proc.returncode != 0
    assert "the engine layer needs no Ray, no web framework, no convert stage BROKEN" in proc.stdout
    assert "runtime.engine.dtypes -> runtime.serve.batch_formation" in proc.stdout


def test_no_module_name_is_used_twice_across_packages():
    """ "Where is window.py?" has one answer: a module's name says what it is, not only where it sits."""
    seen: dict[str, list[str]] = {}
    for package in ("convert", "runtime", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name not in ("__init__.py", "__main__.py"):
                seen.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}


def test_each_unit_test_is_named_after_a_module_it_tests():
    modules = {path.stem for package in ("convert", "runtime", "benchmarks") for path in (ROOT / package).rglob("*.py")}
    # Tests of a behaviour that spans modules, named for the behaviour.
    behaviours = {"alerts", "app_path", "auth", "auth_cost", "backends", "fuzz_artifact", "fuzz_protocol",
                  "launcher_ports", "launcher_status", "layers", "monitor_capture", "onnxruntime_cuda",
                  "remote_repository", "replica_lookup", "rollout_client", "soak_accounting", "tensorrt_backend",
                  "tokens_watch"}  # fmt: skip
    unnamed = sorted(
        path.name
        for path in (ROOT / "tests" / "unit").glob("test_*.py")
        if path.stem.removeprefix("test_") not in modules | behaviours
    )
    assert unnamed == []
