"""Two Ray nodes on this machine (a head and a worker, each its own `ray start` process)
serving cnn from an S3 repository (moto's server on loopback): a replica on each node answers, each
from its own download, verified, in its node's cache. Everything is stopped by process id."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient
import yaml

from benchmarks.s3_server import s3_server
from runtime.engine.artifact import verify_version_dir
from tests.conftest import run_convert
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")
SERVE = str(Path(sys.executable).parent / "serve")


class Processes:
    """Processes started here, each in its own session; stopped with everything they started."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []
        self.family: dict[int, psutil.Process] = {}

    def start(self, command: list[str], env: dict, log: Path) -> subprocess.Popen:
        with open(log, "w") as out:
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(proc)
        return proc

    def remember(self) -> None:
        """Note every descendant now (they outlive a killed parent): what `stop` ends."""
        for proc in self.started:
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = psutil.Process(proc.pid)
                for p in [parent, *parent.children(recursive=True)]:
                    self.family[p.pid] = p

    def stop(self) -> None:
        self.remember()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in self.family.values() if p.is_running()]
            for p in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(sig)
            _, alive = psutil.wait_procs(alive, timeout=20)
            if not alive:
                return


def wait_until(check, timeout_s: float, what: str, processes: Processes):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes.remember()
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        time.sleep(1)
    raise TimeoutError(f"{what} within {timeout_s:.0f} s")


def alive_nodes(address: str, env: dict) -> int:
    probe = "import ray; ray.init(address=%r, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    proc = subprocess.run([sys.executable, "-c", probe % address], env=env, capture_output=True, text=True, timeout=60)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else 0


def test_two_nodes_serve_from_s3_each_replica_from_its_own_verified_download(tmp_path):
    processes = Processes()
    ray_tmp = Path(tempfile.mkdtemp(prefix="trtray-", dir="/tmp"))  # short: Ray's socket paths have a limit
    with s3_server() as s3:
        repository = s3.bucket("cluster") + "/models"
        built = run_convert("build", "configs/models/cnn.yaml", "--repository", repository)
        assert built.returncode == 0, built.stderr
        port, http_port = free_port(), free_port()
        # Ray binds its nodes to this machine's address even when told 127.0.0.1 (resolve_ip_for_localhost):
        # the cluster is this machine's alone all the same; S3 and HTTP stay on loopback.
        from ray._private.services import get_node_ip_address

        address = f"{get_node_ip_address()}:{port}"
        # Ray's token authentication, set explicitly: a token of this test's own for every process here.
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        base = {**os.environ, **s3.env, **auth, "RAY_TMPDIR": str(ray_tmp), "HF_HUB_OFFLINE": "1"}
        base.pop("RAY_AUTH_TOKEN_PATH", None)
        # The proxy (on the head) would send every request to the replica on its own node; here each
        # request may go to either, so both replicas are seen answering.
        base["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
        base.pop("RAY_ADDRESS", None)
        caches = {"head": tmp_path / "cache-head", "worker": tmp_path / "cache-worker"}
        common = [
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "2",
            "--min-worker-port",
            "0",
            "--max-worker-port",
            "0",
        ]
        try:
            processes.start(
                [RAY, "start", "--block", "--head", "--port", str(port), "--include-dashboard", "false",
                 "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                 "--ray-client-server-port", str(free_port()), "--temp-dir", str(ray_tmp), *common],
                {**base, "TRTSERVE_CACHE": str(caches["head"])},
                tmp_path / "head.log",
            )  # fmt: skip
            wait_until(lambda: alive_nodes(address, base) >= 1, 120, "the head node up", processes)
            processes.start(
                [RAY, "start", "--block", "--address", address,
                 "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()), *common],
                {**base, "TRTSERVE_CACHE": str(caches["worker"])},
                tmp_path / "worker.log",
            )  # fmt: skip
            wait_until(lambda: alive_nodes(address, base) == 2, 120, "two nodes alive", processes)

            app = {
                "name": "cluster",
                "route_prefix": "/",
                "import_path": "runtime.serve.app:build_app",
                "args": {
                    "repository": repository,
                    "num_replicas": 2,
                    "max_replicas_per_node": 1,
                    "models": [{"name": "cnn", "version": "latest"}],
                },
            }
            doc = {
                "proxy_location": "HeadOnly",
                "http_options": {"host": "127.0.0.1", "port": http_port},
                "applications": [app],
            }
            config = tmp_path / "serve.yaml"
            config.write_text(yaml.safe_dump(doc, sort_keys=False))
            processes.start(
                [SERVE, "run", "--address", address, str(config)],
                {**base, "TRTSERVE_CACHE": str(tmp_path / "cache-driver")},
                tmp_path / "serve.log",
            )

            def ready() -> bool:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=5) as r:
                    return r.status == 200

            wait_until(ready, 420, "the application ready (see serve.log)", processes)
            client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=60)
            image = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
            answers, replicas = [], {}
            deadline = time.monotonic() + 120
            while len(replicas) < 2 and time.monotonic() < deadline:
                request = httpclient.InferInput("image", list(image.shape), "FP32")
                request.set_data_from_numpy(image)
                answers.append(client.infer("cnn", [request]).as_numpy("logits"))
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/cnn/stats", timeout=10) as r:
                    replica = json.loads(r.read())["model_stats"][0]["replica"]
                replicas[replica["node_id"]] = replica["loaded_from"]
        finally:
            processes.stop()
            with contextlib.suppress(OSError):
                __import__("shutil").rmtree(ray_tmp, ignore_errors=True)
    assert len(replicas) == 2, f"replicas answered from {replicas}"  # one per node
    loaded = {Path(p) for p in replicas.values()}
    assert loaded == {caches["head"] / "s3/cluster/models/cnn/1", caches["worker"] / "s3/cluster/models/cnn/1"}
    for directory in loaded:
        verify_version_dir(directory)  # each node's own copy, complete and matching its manifest
    for answer in answers[1:]:
        np.testing.assert_allclose(answer, answers[0], rtol=1e-5, atol=1e-6)
