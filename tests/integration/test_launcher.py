"""`trtserve serve` (what `make run` runs) starts a Ray instance and HAProxy of its own and stops exactly
those: an unrelated Ray head, started here on another port and named by RAY_ADDRESS, is neither used nor
stopped, and nothing of the server's is left running. A deployment that cannot start ends it within
seconds of Ray Serve's verdict, with the replica's one-line error. HAProxy's stats page listens on
loopback only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from runtime.capacity.local_server import serve_config
from tests.fixtures.ports import free_port, haproxy_ports

BIN = Path(sys.executable).parent


def wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def ray_like(process: psutil.Process) -> bool:
    try:
        text = " ".join(process.cmdline()) + " " + process.name()
    except psutil.Error:
        return False
    return any(word in text for word in ("ray", "raylet", "gcs_server", "haproxy", "trtserve"))


@pytest.mark.slow  # a Ray cluster started and stopped twice: over a minute of the default tier
def test_trtserve_serve_stops_only_what_it_started(built_repository, tmp_path):
    head_port = free_port()
    command = [str(BIN / "ray"), "start", "--head", f"--port={head_port}", "--block", "--num-cpus=1"]
    head = subprocess.Popen(
        [*command, "--include-dashboard=false", "--disable-usage-stats"],
        stdout=open(tmp_path / "head.log", "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: listening(head_port), 120, "the unrelated Ray head did not start")
        time.sleep(3)  # its raylet and the rest register after the GCS listens
        unrelated = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
        assert any("gcs_server" in p.name() for p in unrelated)
        before = {p.pid for p in psutil.process_iter()}

        port = free_port()
        args = {"repository": str(built_repository), "models": [{"name": "cnn"}]}
        config = serve_config(tmp_path / "serve.yaml", args, name="trtserve", port=port)
        env = {
            **os.environ,
            "RAY_ADDRESS": f"127.0.0.1:{head_port}",  # what the old launcher would have joined
            **haproxy_ports(),  # the session's server (slow tier) holds HAProxy's default ones
        }
        serve = subprocess.Popen(
            [str(BIN / "trtserve"), "serve", str(config), "--log", str(tmp_path / "serve.log")],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = []
        for line in serve.stdout:
            lines.append(line)
            if "trtserve ready at" in line or serve.poll() is not None:
                break
        assert f"trtserve ready at http://127.0.0.1:{port}" in "".join(lines), "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/cnn/ready", timeout=10) as response:
            assert response.status == 200

        serve.send_signal(signal.SIGTERM)  # as a supervisor stops it
        rest, _ = serve.communicate(timeout=120)
        assert serve.returncode == 0, "".join(lines) + rest
        assert "stopped" in rest

        assert all(p.is_running() for p in unrelated), "the unrelated Ray head lost a process"
        assert listening(head_port), "the unrelated Ray head stopped answering"
        left = [p for p in psutil.process_iter() if p.pid not in before and ray_like(p)]
        assert not left, [(p.pid, p.name()) for p in left]
        assert not listening(port)
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the group this test started, and only it
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_trtserve_serve_exits_with_the_replicas_error_when_its_deployment_cannot_start(cnn_repository, tmp_path):
    # Inputs hashed in captures need a secret key: without $TRTSERVE_CAPTURE_KEY every replica's constructor
    # raises, and Ray Serve gives up on the deployment after three tries (DEPLOY_FAILED, about 5 s after its
    # replicas start here), long before `trtserve serve`'s 300 s wait for readiness ends.
    capture = {"sampling_percent": 100, "destination": str(tmp_path / "captures"), "redact": {"hash": ["image"]}}
    args = {"repository": str(cnn_repository), "models": [{"name": "cnn"}], "capture": capture}
    config = serve_config(tmp_path / "serve.yaml", args, name="trtserve", port=free_port())
    env = {k: v for k, v in os.environ.items() if k != "TRTSERVE_CAPTURE_KEY"}
    before = {p.pid for p in psutil.process_iter()}
    started = time.monotonic()
    serve = subprocess.Popen(
        [str(BIN / "trtserve"), "serve", str(config), "--log", str(tmp_path / "serve.log")],
        env={**env, **haproxy_ports()},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = serve.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        serve.send_signal(signal.SIGTERM)  # stops what it started
        out, err = serve.communicate(timeout=120)
    elapsed = time.monotonic() - started
    assert serve.returncode == 1, out + err
    assert elapsed < 90, f"exited after {elapsed:.0f} s: {err}"
    reason = (
        "CaptureError: cnn: capture.redact.hash ['image'] needs a secret key in $TRTSERVE_CAPTURE_KEY, which is not set"
    )
    assert err.startswith(f"trtserve serve: error: application trtserve: deployment trtserve failed to start: {reason}")
    assert err.count("\n") == 1 and "Traceback" not in err, err
    left = [p for p in psutil.process_iter() if p.pid not in before and ray_like(p)]
    assert not left, [(p.pid, p.name()) for p in left]


def test_haproxys_stats_page_listens_on_loopback_only(server):
    stats_port = int(server.extra_env["RAY_SERVE_HAPROXY_STATS_PORT"])
    haproxies = [p for p in server.processes() if p.name() == "haproxy"]
    assert haproxies, "the server runs no HAProxy"
    bound = {
        (c.laddr.ip, c.laddr.port)
        for p in haproxies
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == stats_port
    }
    assert bound == {("127.0.0.1", stats_port)}  # Ray's own config binds it on every interface
    with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats", timeout=10) as response:
        assert response.status == 200  # and the page still works where it is


def test_trtserve_serve_says_why_serve_run_refused_the_config(tmp_path):
    config = tmp_path / "serve.yaml"  # an application's name must be a string: Serve's schema refuses it
    config.write_text(
        f"http_options: {{host: 127.0.0.1, port: {free_port()}}}\napplications: [{{name: [1], import_path: a:b}}]\n"
    )
    serve = subprocess.run(
        [str(BIN / "trtserve"), "serve", str(config), "--log", str(tmp_path / "serve.log")],
        env={**os.environ, **haproxy_ports()},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 1, serve.stdout + serve.stderr
    assert serve.stderr == (
        "trtserve serve: error: serve run exited with 1: ValidationError: 1 validation error for "
        f"ServeDeploySchema; see {tmp_path / 'serve.log'}\n"
    )
