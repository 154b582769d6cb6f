"""Faults and strangers on real Ray Serve behind the default (HAProxy) ingress, as `trtserve serve` starts
it: two replicas of cnn with authentication on. A replica SIGKILLed under load, and one whose health check
starts failing, cost no request; tokens are checked route by route (tritonclient and raw HTTP) and never
logged; a bounded fuzz of the running server gets only 4xx answers and restarts no replica."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import threading
import time
import urllib.request

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from benchmarks.abuse import MemoryWatch, Streamed, oversized_json_request, post, stream_body, waits_while
from runtime.auth.tokens import digest
from runtime.capacity.load_generator import build_request, closed_loop, open_loop
from runtime.serve.launcher import LocalServe
from tests.fixtures.fuzz import infer_requests

pytestmark = pytest.mark.slow  # about 2 minutes: the default tier is near its 10-minute budget

PORT = 8011  # beside the session's server on 8000
# HAProxy's stats, metrics and fallback-proxy ports are fixed by default: this HAProxy takes its own.
HAPROXY_PORTS = {
    "RAY_SERVE_HAPROXY_STATS_PORT": "18404",
    "RAY_SERVE_HAPROXY_METRICS_PORT": "19101",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": "18500",
}
INFER_TOKEN, ADMIN_TOKEN = "reliability-infer-token-1", "reliability-admin-token-2"
IMAGE = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
AUTH = {"authorization": f"Bearer {INFER_TOKEN}"}


@pytest.fixture(scope="module")
def secured(built_repository, tmp_path_factory):
    work = tmp_path_factory.mktemp("reliability")
    (work / "tokens.txt").write_text(f"infer {digest(INFER_TOKEN)}\nadmin {digest(ADMIN_TOKEN)}\n")
    (work / "faults").mkdir()
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": PORT},
        "applications": [
            {
                "name": "trtserve",
                "route_prefix": "/",
                "import_path": "tests.fixtures.faulty_app:build_app",
                "args": {
                    "repository": str(built_repository),
                    "models": [{"name": "cnn", "version": 1}],
                    "num_replicas": 2,
                    "auth": {"tokens_file": str(work / "tokens.txt")},
                    "fault_dir": str(work / "faults"),
                },
            }
        ],
    }
    path = work / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with LocalServe(path, log_path=work / "serve.log", env=HAPROXY_PORTS) as server:
        server.faults = work / "faults"
        server.config_doc = config
        wait_for_replicas(server, 2)
        yield server


def replicas(server: LocalServe) -> list[psutil.Process]:
    return server.replicas("trtserve")


def serving_pids(server: LocalServe, tries: int = 40) -> set[int]:
    """The replica processes that answer requests (the stats say which one answered)."""
    pids = set()
    for _ in range(tries):
        request = urllib.request.Request(f"{server.url}/v2/models/cnn/stats", headers=admin())
        with urllib.request.urlopen(request, timeout=10) as response:
            pids.add(json.loads(response.read())["model_stats"][0]["replica"]["pid"])
    return pids


def wait_for_replicas(server: LocalServe, count: int, timeout_s: float = 180) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = {p.pid for p in replicas(server)}
        if len(alive) == count and server.get("/v2/health/ready")[0] == 200 and serving_pids(server) == alive:
            return alive
        time.sleep(1)
    raise AssertionError(f"not {count} serving replicas within {timeout_s:.0f} s")


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def raw(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def infer_body() -> bytes:
    return json.dumps(
        {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(IMAGE.shape), "data": IMAGE.ravel().tolist()}]}
    ).encode()


# authentication


def test_tritonclient_with_and_without_a_token(secured):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{PORT}")
    tensor = httpclient.InferInput("image", list(IMAGE.shape), "FP32")
    tensor.set_data_from_numpy(IMAGE, binary_data=True)
    logits = client.infer("cnn", [tensor], headers={"Authorization": f"Bearer {INFER_TOKEN}"}).as_numpy("logits")
    assert logits.shape == (1, 10)
    for headers, status in ((None, "401"), ({"Authorization": "Bearer wrong"}, "401"), (admin(), "403")):
        with pytest.raises(InferenceServerException) as e:
            client.infer("cnn", [tensor], headers=headers)
        assert e.value.status() == status
    assert client.get_model_metadata("cnn", headers={"Authorization": f"Bearer {INFER_TOKEN}"})["name"] == "cnn"
    assert client.is_server_live() and client.is_server_ready()  # health: no token


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/v2", "infer"),
        ("GET", "/v2/models/cnn", "infer"),
        ("POST", "/v2/models/cnn/infer", "infer"),
        ("GET", "/v2/models/cnn/stats", "admin"),
        ("GET", "/v2/models/cnn/monitor", "admin"),
        ("GET", "/v2/models/cnn/rollout", "admin"),
    ],
)
def test_raw_http_matrix(secured, method, path, scope):
    body = infer_body() if method == "POST" else b""
    right, other = (INFER_TOKEN, ADMIN_TOKEN) if scope == "infer" else (ADMIN_TOKEN, INFER_TOKEN)
    status, headers, _ = raw(method, path, body)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="trtserve"'
    status, headers, _ = raw(method, path, body, {"Authorization": "Bearer nope"})
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    status, headers, _ = raw(method, path, body, {"Authorization": f"Bearer {other}"})
    assert status == 403 and 'error="insufficient_scope"' in headers["www-authenticate"]
    status, _, data = raw(method, path, body, {"Authorization": f"Bearer {right}"})
    assert status == 200, data
    for probe in ("/v2/health/live", "/v2/health/ready"):
        assert raw("GET", probe)[0] == 200


def test_refusals_are_counted_and_tokens_never_logged(secured):
    raw("GET", "/v2/models/cnn", headers={"Authorization": "Bearer leaked-secret-token-in-a-log"})
    raw("GET", "/v2/models/cnn", headers={"Authorization": f"Bearer {INFER_TOKEN}"})
    ports = [p.read_text().strip() for p in secured.session_dir.glob("metrics_export_port_*")]
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline and 'reason="invalid"' not in text:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/metrics", timeout=10) as response:
            text = response.read().decode()
        time.sleep(1)
    assert "ray_trtserve_auth_failures_total{" in text and 'reason="invalid"' in text
    time.sleep(1)  # log lines are flushed as they are written; give the file system a moment
    logs = list((secured.session_dir / "logs").rglob("*"))
    assert any("refused GET /v2/models/cnn: invalid" in _read(p) for p in logs)
    for secret in ("leaked-secret-token-in-a-log", INFER_TOKEN, ADMIN_TOKEN):
        assert not [p for p in logs if secret in _read(p)], secret


def test_a_token_added_or_revoked_in_the_file_applies_without_a_redeploy(secured):
    tokens = secured.faults.parent / "tokens.txt"
    original = tokens.read_text()
    rotated = {"Authorization": "Bearer reliability-rotated-token-3"}

    def settles_on(status: int, timeout_s: float = 30.0) -> None:
        # Both replicas watch the file: the answer must hold for a run of requests, which HAProxy (leastconn,
        # one request at a time) spreads over both.
        deadline, streak = time.monotonic() + timeout_s, 0
        while time.monotonic() < deadline and streak < 20:
            streak = streak + 1 if raw("GET", "/v2/models/cnn", headers=rotated)[0] == status else 0
            time.sleep(0.05 if streak else 0.5)
        assert streak >= 20, f"not {status} within {timeout_s:.0f} s"

    def replace(text: str) -> None:  # as the README asks: a whole new file renamed over the old one
        staged = tokens.with_suffix(".next")
        staged.write_text(text)
        staged.replace(tokens)

    try:
        settles_on(401)
        replace(original + f"infer {digest('reliability-rotated-token-3')}\n")
        settles_on(200)
        replace(original)  # revoked
        settles_on(401)
    finally:
        replace(original)


def _read(path) -> str:
    try:
        return path.read_text(errors="replace") if path.is_file() else ""
    except OSError:
        return ""


# the running server, fuzzed


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    request=infer_requests(),
    path=st.sampled_from(["/v2/models/cnn/infer", "/v2/models/cnn/versions/1/infer", "/v2/models/cnn%2F/infer"]),
    method=st.sampled_from(["POST", "POST", "POST", "PUT", "GET"]),
)
def test_fuzzed_requests_get_4xx_and_restart_nothing(secured, request, path, method):
    if not hasattr(secured, "fuzz_pids"):
        secured.fuzz_pids = {p.pid for p in replicas(secured)}
    body, headers = request
    # What an HTTP/1.1 client can send: latin-1, and no line breaks in a value (http.client refuses them).
    headers = {
        k: v.encode("latin-1", "replace").decode("latin-1").replace("\r", " ").replace("\n", " ")
        for k, v in headers.items()
    }
    status, _, data = raw(method, path, body, {**headers, **AUTH})
    assert status < 500, data[:300]
    assert {p.pid for p in replicas(secured)} == secured.fuzz_pids  # no replica restarted


# faults


def _load_with(secured, fault, seconds: float = 12.0, at: float = 4.0):
    """Closed-loop load (c=8) on cnn; `fault()` runs `at` seconds in."""
    request = build_request("127.0.0.1", PORT, "/v2/models/cnn/infer", infer_body(), AUTH)
    timer = threading.Timer(at + 1.0, fault)  # + the load's 1 s warm-up
    timer.start()
    try:
        return asyncio.run(closed_loop("127.0.0.1", PORT, request, 8, seconds))
    finally:
        timer.cancel()


def test_a_replica_killed_under_load_costs_no_request(secured):
    before = wait_for_replicas(secured, 2)
    victim = min(before)
    result = _load_with(secured, lambda: os.kill(victim, signal.SIGKILL))
    assert result.completed > 100
    assert result.statuses == {200: result.completed}, result.summary()
    # Not asserted yet: `result.retried`, requests the client resent because an HAProxy reload closed its idle
    # kept-alive connection (16 in the first run, 2 reloads x 8 connections; see the issue-18 note).
    after = wait_for_replicas(secured, 2)
    assert victim not in after


def test_a_replica_failing_its_health_check_costs_no_request(secured):
    before = wait_for_replicas(secured, 2)
    victim = min(before)
    result = _load_with(secured, lambda: (secured.faults / str(victim)).touch(), seconds=20.0)
    assert result.completed > 100
    assert result.statuses == {200: result.completed}, result.summary()
    after = wait_for_replicas(secured, 2)
    assert victim not in after  # Serve replaced it


@contextlib.contextmanager
def one_replica(secured, **options):
    """One replica through a `deployments:` override (no rebuild: the replica count and `options`, such as
    max_queued_requests, are the override's); two again afterwards, for whatever runs next."""
    doc = dict(secured.config_doc)
    override = {"name": "trtserve", "num_replicas": 1, **options}
    doc["applications"] = [{**doc["applications"][0], "deployments": [override]}]
    path = secured.faults.parent / "serve-one.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    secured.deploy(path)
    try:
        (victim,) = wait_for_replicas(secured, 1)
        yield victim
    finally:
        secured.deploy(secured.faults.parent / "serve.yaml")


def test_the_only_replica_killed_under_load_gets_callers_200_or_503(secured):
    with one_replica(secured) as victim:
        # An open loop (as in the reliability benchmark): HAProxy holds idle connections to the replica from
        # the load's bursts, and requests in flight at the kill are retried past those dead connections to
        # Ray's fallback proxy, which holds them until the replacement is up. They wait; nobody gets a 500 or
        # a closed connection (status 0). With 3 retries (the old setting) this test failed in 2 runs of 2.
        request = build_request("127.0.0.1", PORT, "/v2/models/cnn/infer", infer_body(), AUTH)
        timer = threading.Timer(4.0, lambda: os.kill(victim, signal.SIGKILL))
        timer.start()
        try:
            result = asyncio.run(
                open_loop("127.0.0.1", PORT, request, 150.0, 15.0, timeout_s=60.0, max_connections=4096)
            )
        finally:
            timer.cancel()
        assert set(result.statuses.tolist()) <= {200, 503}, result.summary()["statuses"]
        assert victim not in wait_for_replicas(secured, 1)


def test_with_a_short_queue_callers_of_a_dead_lone_replica_get_503_retry_after_at_once(secured):
    """What the README offers a caller who would rather be told than wait: `max_queued_requests` small. While
    the replacement starts, the fallback proxy holds that many and answers the rest 503 + Retry-After."""
    with one_replica(secured, max_queued_requests=4) as victim:
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.0)  # HAProxy marks it down after about 0.5 s: new requests go to the fallback proxy
        answers: list[tuple[int, dict, float]] = []

        def one() -> None:
            started = time.monotonic()
            status, headers, _ = raw("POST", "/v2/models/cnn/infer", infer_body(), AUTH)
            answers.append((status, headers, time.monotonic() - started))

        callers = [threading.Thread(target=one) for _ in range(32)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(120)
        assert len(answers) == 32 and {status for status, _, _ in answers} <= {200, 503}, answers
        told = [(headers, took) for status, headers, took in answers if status == 503]
        waited = [took for status, _, took in answers if status == 200]
        assert told, f"every caller waited for the replacement: {sorted(waited)}"
        assert all(headers.get("retry-after") == "1" for headers, _ in told), told
        assert waited, "none held: the fallback proxy should hold up to max_queued_requests"
        # Told at once: the 503s came before the replacement answered anyone the fallback held.
        assert max(took for _, took in told) < min(waited), (sorted(t for _, t in told), sorted(waited))
        assert victim not in wait_for_replicas(secured, 1)


# what a client sends cannot hurt a replica


def test_large_bodies_without_a_token_are_refused_unread_and_cost_no_memory(secured):
    """Three clients each stream 768 MiB with no token: each is answered 401 at once, and the replicas grow
    by far less than what was sent (before, every body was read whole first: 256 MiB grew one by 513 MiB)."""
    watch = MemoryWatch(replicas(secured))
    watch.start()
    results: list[Streamed] = []
    clients = [
        threading.Thread(
            target=lambda: results.append(stream_body("127.0.0.1", PORT, "/v2/models/cnn/infer", 768 << 20, {}))
        )
        for _ in range(3)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(300)
    growth = watch.growth()
    assert [r.status for r in results] == [401, 401, 401], results
    assert all(r.answered_s < 5.0 for r in results), results
    assert growth <= 256 << 20, f"the replicas grew by {growth / 2**20:.0f} MiB"


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(secured):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    conn.putrequest("POST", "/v2/models/cnn/infer")
    conn.putheader("Content-Length", str(768 << 20))
    for key, value in AUTH.items():
        conn.putheader(key, value)
    conn.endheaders()
    conn.send(b"{" * 65536)  # a little of it: the answer comes without the rest
    response = conn.getresponse()
    assert response.status == 413 and b"exceeds the limit of 12648448 bytes" in response.read()  # cnn's largest
    conn.close()


@pytest.mark.parametrize(
    ("size", "status", "message"),
    [
        (60_000_000, 413, b"exceeds the limit of"),  # past the largest request cnn takes: refused unread
        (12_000_000, 400, b"outside [1, 128]"),  # the largest JSON cnn takes: read, parsed off the loop, refused
    ],
)
def test_the_replica_keeps_answering_while_a_large_body_is_refused(secured, size, status, message):
    """One replica; a large JSON request (within max_body_mb, a batch past any limit) sent three times while a
    small request every 0.1 s keeps being answered within 1.5 s."""
    big = oversized_json_request(size)
    refused: list[tuple[int, bytes]] = []

    def send_big() -> None:
        for _ in range(3):
            refused.append(post("127.0.0.1", PORT, "/v2/models/cnn/infer", big, AUTH))

    with one_replica(secured):
        waits = waits_while("127.0.0.1", PORT, ("/v2/models/cnn/infer", infer_body(), AUTH), send_big)
    assert all(got == status and message in data for got, data in refused), refused[0][1][:200]
    assert len(waits) >= 5 and all(got == 200 for _, got in waits), waits
    assert max(seconds for seconds, _ in waits) <= 1.5, sorted(waits)[-5:]
