"""Test tiers are set from the path (tests/unit, tests/integration); `gpu` tests are skipped with the
missing capability named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    gpu_skip = cuda_skip = None
    for item in items:
        path = Path(str(item.fspath)).relative_to(ROOT).parts
        if "unit" in path:
            item.add_marker(pytest.mark.unit)
        elif "integration" in path:
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("gpu"):
            if gpu_skip is None:
                gpu_skip = _gpu_missing()
            if gpu_skip:
                item.add_marker(pytest.mark.skip(reason=gpu_skip))
        if item.get_closest_marker("cuda"):
            if cuda_skip is None:
                cuda_skip = _cuda_missing()
            if cuda_skip:
                item.add_marker(pytest.mark.skip(reason=cuda_skip))


def _gpu_missing() -> str:
    from runtime.engine.backends.tensorrt import TensorRTEngine

    ok, why = TensorRTEngine.availability()
    return "" if ok else f"requires TensorRT >= 10.1, cuda-python and an NVIDIA GPU ({why})"


def _cuda_missing() -> str:
    try:
        import torch
    except ImportError:
        return "requires torch with CUDA (torch is not installed)"
    if not torch.cuda.is_available():
        return f"requires a CUDA device for torch (torch {torch.__version__}: torch.cuda.is_available() is False)"
    return ""


def run_convert(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The CLI as users run it: a separate process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "convert", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )


def _copy_demo_model(config: pytest.Config, name: str, repo: Path) -> None:
    """A demo model built through the CLI once per state of the code and config that build it, in pytest's
    cache (`make test-slow` after `make test`, as CI runs them, builds nothing), copied into `repo`."""
    import hashlib

    from filelock import FileLock

    digest = hashlib.sha256()
    # Every file convert/ and runtime/engine/ hold (code, and data such as convert/zoo/data/*.txt), bytecode aside.
    sources = sorted(
        path
        for top in (ROOT / "convert", ROOT / "runtime" / "engine")
        for path in top.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    for path in [*sources, ROOT / "configs" / "models" / f"{name}.yaml"]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    cache = config.cache.mkdir("trtserve-demo-models")
    built = cache / f"{name}-{digest.hexdigest()[:16]}"
    with FileLock(str(built) + ".lock"):
        if not (built / "done").exists():
            _forget_older_builds(cache, name, keep=built)
            shutil.rmtree(built, ignore_errors=True)
            proc = run_convert("build", f"configs/models/{name}.yaml", "--repository", built)
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.strip() == str(built / name / "1")
            (built / "done").touch()
        shutil.copytree(built / name, repo / name)  # under the lock: no other session removes it meanwhile


def _forget_older_builds(cache: Path, name: str, keep: Path) -> None:
    """The cache holds one build of each model: the others (of code since changed) go, each under its lock;
    one another session is copying from right now (it holds the lock) stays."""
    from filelock import FileLock, Timeout

    for other in cache.glob(f"{name}-*"):
        if other == keep or not other.is_dir():
            continue
        try:
            with FileLock(str(other) + ".lock", timeout=0):
                shutil.rmtree(other, ignore_errors=True)
        except Timeout:
            continue


def _copy_models(config: pytest.Config, repo: Path, names: tuple[str, ...]) -> Path:
    """A session's own copy of the demo models `names` (version 1 of each), as `convert build` wrote them."""
    for name in names:
        _copy_demo_model(config, name, repo)
    return repo


@pytest.fixture(scope="session")
def built_repository(request, tmp_path_factory) -> Path:
    """The demo models as `convert build` writes them (version 1 of each), a copy of this session's own."""
    return _copy_models(request.config, tmp_path_factory.mktemp("model_repository"), ("cnn", "minilm"))


@pytest.fixture(scope="session")
def cnn_repository(request, tmp_path_factory) -> Path:
    """A repository with the cnn alone: what the GPU tests need, also where MiniLM's weights are not installed."""
    return _copy_models(request.config, tmp_path_factory.mktemp("cnn_repository"), ("cnn",))


@pytest.fixture(scope="session")
def server(built_repository, tmp_path_factory):
    """The demo models on real Ray Serve, on loopback, behind the default (HAProxy) ingress.

    cnn gets a small queue (128 rows) so overload can be provoked; bodies are capped at 8 MiB."""
    import yaml

    from runtime.serve.launcher import LocalServe
    from tests.fixtures.ports import haproxy_ports

    workdir = tmp_path_factory.mktemp("serve")
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": [
            {
                "name": "trtserve",
                "route_prefix": "/",
                "import_path": "runtime.serve.app:build_app",
                "args": {
                    "repository": str(built_repository),
                    "max_body_mb": 8,
                    "models": [
                        {"name": "minilm", "version": "latest"},
                        {"name": "cnn", "version": 1, "max_queued_rows": 128},
                    ],
                },
            }
        ],
    }
    path = workdir / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # HAProxy's stats, metrics and fallback ports of its own: servers that tests start beside it keep theirs.
    with LocalServe(path, log_path=workdir / "serve.log", env=haproxy_ports()) as local:
        yield local


@pytest.fixture
def forget_gpu():
    """Clear what trtserve remembers about the GPU before and after a test that fakes one."""
    from tests.fixtures.gpu_fakes import forget_gpu as forget

    forget()
    yield
    forget()
