"""Rollouts judged by the decision-maker on real Ray Serve, under steady load: a candidate whose outputs
disagree is rolled back under shadow, an identical one is promoted under canary with answers from both
versions meanwhile, a rollback after promotion is instant, a much slower one is rolled back on p99, one
scoring below stable on its eval set is refused before any traffic, a command with a bad argument is
refused naming it and changes nothing, pause and resume hold the routing, a killed decision-maker comes
back with the rollout, and every response is 200."""

from __future__ import annotations

import http.client
import json
import threading
import time

import orjson
import pytest
import yaml

from runtime.serve.launcher import LocalServe
from tests.fixtures.artifacts import sequence_model
from tests.integration.test_launcher import free_port

pytestmark = pytest.mark.slow  # a minute of rollouts under load: make test-slow

BODY = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]})


def call(port, method, path, doc=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=json.dumps(doc).encode() if doc is not None else b"")
    response = conn.getresponse()
    data = json.loads(response.read() or b"null")
    conn.close()
    return response.status, data


class Load(threading.Thread):
    """Requests one after another, each with its own id; every status and answering version kept."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.statuses, self.versions, self.stopped = port, [], [], threading.Event()

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        i = 0
        while not self.stopped.is_set():
            conn.request("POST", "/v2/models/seq/infer", body=BODY, headers={"X-Request-ID": f"load-{i}"})
            response = conn.getresponse()
            payload = response.read()
            self.statuses.append(response.status)
            if response.status == 200:
                self.versions.append(orjson.loads(payload)["model_version"])
            i += 1

    def stop(self):
        self.stopped.set()
        self.join(30)


def settled_on(load, version, answers=30, timeout_s=30):
    """Waits until the last `answers` answers all came from one version. A rollback the decision-maker has
    reported reaches the replica with its next report (every 0.5 s, later on a loaded machine), and until
    then the candidate still gets its share: 5 answers from stable in a row came by chance often enough at
    a 50 % step to fail CI once (the candidate answered after them); 30 in a row is 1 in 10^9."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        recent = load.versions[-answers:]
        if len(recent) == answers and set(recent) == {version}:
            return
        time.sleep(0.1)
    raise AssertionError(f"the load is not answered by version {version} alone: {load.versions[-answers:]}")


def wait_until_ended(port, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, status = call(port, "GET", "/v2/models/seq/rollout")
        if status["state"] in ("promoted", "rolled_back", "refused"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"the rollout did not end within {timeout_s} s: {status}")


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollouts")
    repository = root / "repo"
    sequence_model(repository / "seq" / "1")
    sequence_model(repository / "seq" / "2", scale=3.0)  # disagrees with v1
    sequence_model(repository / "seq" / "3")  # the same as v1
    # The same answers, much slower: a p99 of 46-49 ms here, where a loaded CI machine's hiccups once put a 1 ms
    # model's p99 past a third of a 15 ms candidate's (64 products) in two intervals running.
    sequence_model(repository / "seq" / "4", slow_matmuls=256)
    sequence_model(repository / "seq" / "5", scale=-1.0, evaluated=True)  # scores 0 on its eval set, v1 1
    port = free_port()
    app = {
        "name": "rollouts",
        "route_prefix": "/",
        "import_path": "runtime.serve.app:build_app",
        "args": {"repository": str(repository), "models": [{"name": "seq", "version": 1}]},
    }
    doc = {"proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1", "port": port}, "applications": [app]}
    (root / "serve.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    # Ray's Python proxy: HAProxy binds fixed stats ports (8404, 9101) that another server may hold.
    with LocalServe(root / "serve.yaml", ingress="proxy", log_path=root / "serve.log") as server:
        load = Load(port)
        load.start()
        yield port, load, server
        load.stop()
    assert set(load.statuses) == {200}, f"non-200 answers: {sorted(set(load.statuses))}"


FAST = {"interval_s": 2, "min_requests": 20, "failure_limit": 2}
# A twin of stable judged on 20 requests an interval: its p99 is their slowest, and a scheduler hiccup on this
# 2-core machine puts a 1 ms model's there at 5-10 ms (seen: stable's own p99 7.2 ms). Tests about something
# else than latency widen the p99 slack; the slow candidate below is judged with the defaults.
LENIENT_P99 = {"p99_slack_ms": 25}


def test_a_disagreeing_candidate_under_shadow_is_rolled_back(serving):
    port, _, _ = serving
    status, body = call(
        port, "POST", "/v2/models/seq/rollout", {"action": "start", "to": 2, "strategy": "shadow", **FAST}
    )
    assert status == 200, body
    ended = wait_until_ended(port)
    assert ended["state"] == "rolled_back" and "outputs agree on 0.00%" in ended["reason"]
    assert ended["serving"] == "1"
    judged = [i for i in ended["intervals"] if i["outcome"] == "fail"]
    assert len(judged) == 2  # rolled back after failure_limit failed intervals


def test_an_identical_candidate_under_canary_is_promoted_and_rollback_is_instant(serving):
    port, load, _ = serving
    seen_before = len(load.versions)
    status, body = call(
        port, "POST", "/v2/models/seq/rollout", {"action": "start", "to": 3, "steps": [50, 100], **FAST, **LENIENT_P99}
    )
    assert status == 200, body
    ended = wait_until_ended(port)
    assert ended["state"] == "promoted", json.dumps(ended)
    assert {"1", "3"} <= set(load.versions[seen_before:])  # both answered meanwhile
    started = time.monotonic()
    status, body = call(port, "POST", "/v2/models/seq/rollout", {"action": "rollback", "reason": "by hand"})
    assert status == 200 and body["state"] == "rolled_back" and body["applied_everywhere"], body
    assert time.monotonic() - started < 5
    mark = len(load.versions) + 1  # the load's one request in flight may have been routed before
    time.sleep(1)
    assert set(load.versions[mark:]) == {"1"}
    status, history = call(port, "POST", "/v2/models/seq/rollout", {"action": "history"})
    assert [e["state"] for e in history] == ["progressing", "promoted", "rolled_back"]


def test_commands_that_do_not_fit_are_refused_with_a_reason(serving):
    port, _, _ = serving
    status, body = call(port, "POST", "/v2/models/seq/rollout", {"action": "start", "to": 9})
    assert status == 400 and "no version 9" in body["error"]
    status, body = call(port, "POST", "/v2/models/nope/rollout", {"action": "status"})
    assert status == 409 and "serves no model 'nope'" in body["error"]
    _, before = call(port, "GET", "/v2/models/seq/rollout")
    for doc, named in [
        ({"action": "start", "to": {}}, "start: to: "),
        ({"action": "start", "to": 3, "steps": "x"}, "start: steps: "),
        ({"action": "start", "to": 3, "max_error_ratio": "0.1"}, "start: max_error_ratio: "),
        ({"action": "start", "to": 3, "keep_previous_s": 0}, "start: keep_previous_s: unknown key"),
        ({"action": "rollback", "reason": 5}, "rollback: reason: "),
        ({"action": "pause", "timeout_s": "x"}, "pause: timeout_s: "),
    ]:
        status, body = call(port, "POST", "/v2/models/seq/rollout", doc)
        assert status == 400 and body["error"].startswith(named), (doc, body)
    _, after = call(port, "GET", "/v2/models/seq/rollout")
    assert after == before  # a 400 changed nothing


def test_a_much_slower_candidate_is_rolled_back_on_p99(serving):
    port, _, _ = serving
    status, body = call(
        port, "POST", "/v2/models/seq/rollout", {"action": "start", "to": 4, "steps": [50, 100], **FAST}
    )
    assert status == 200, body
    ended = wait_until_ended(port)
    assert ended["state"] == "rolled_back" and "p99" in ended["reason"], json.dumps(ended)  # in full, unabridged
    failed = [i for i in ended["intervals"] if i["outcome"] == "fail"]
    assert len(failed) == 2 and all(i["candidate"]["p99_ms"] > 1.5 * i["stable"]["p99_ms"] for i in failed)
    assert all(i["agreement"] == 1.0 for i in failed)  # same answers: it is the latency that failed


def test_a_candidate_scoring_below_stable_is_refused_before_any_traffic(serving):
    port, load, _ = serving
    settled_on(load, "1")  # the rollback of the slow candidate above may not have reached the replica yet
    mark = len(load.versions)
    status, body = call(port, "POST", "/v2/models/seq/rollout", {"action": "start", "to": 5})
    assert status == 200 and body["state"] == "refused", body
    assert "eval accuracy 0.0000 below stable's 1.0000" in body["reason"]  # v1 scored offline on v5's set
    time.sleep(1)
    assert set(load.versions[mark:]) == {"1"}


def test_pause_and_resume_hold_the_routing_under_load(serving):
    port, load, _ = serving
    status, body = call(
        port, "POST", "/v2/models/seq/rollout", {"action": "start", "to": 3, "steps": [50, 100], "interval_s": 600}
    )
    assert status == 200 and body["applied_everywhere"], body
    status, body = call(port, "POST", "/v2/models/seq/rollout", {"action": "pause"})
    assert status == 200 and body["state"] == "paused" and body["weight"] == 50 and body["applied_everywhere"]
    mark = len(load.versions)
    time.sleep(2)
    assert set(load.versions[mark:]) == {"1", "3"}  # paused where it was: both versions answer
    status, body = call(port, "POST", "/v2/models/seq/rollout", {"action": "resume"})
    assert status == 200 and body["state"] == "progressing" and body["applied_everywhere"], body


def test_a_killed_decision_maker_comes_back_with_the_rollout(serving):
    """Its replica's process SIGKILLed (ours: found among the processes this server started)."""
    port, _, server = serving
    _, before = call(port, "GET", "/v2/models/seq/rollout")
    assert before["state"] == "progressing" and before["candidate"] == "3"  # from the test above
    controllers = [p for p in server.processes() if "trtserve-rollouts" in " ".join(p.cmdline())]
    assert len(controllers) == 1, [p.cmdline() for p in server.processes()]
    controllers[0].kill()
    controllers[0].wait(10)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, after = call(port, "GET", "/v2/models/seq/rollout")
        if status == 200:
            break
        time.sleep(1)
    assert status == 200, after
    assert {k: after[k] for k in ("state", "candidate", "weight")} == {
        "state": "progressing",
        "candidate": "3",
        "weight": 50,
    }
    status, body = call(port, "POST", "/v2/models/seq/rollout", {"action": "rollback", "reason": "after restart"})
    assert status == 200 and body["state"] == "rolled_back" and body["applied_everywhere"], body
    status, history = call(port, "POST", "/v2/models/seq/rollout", {"action": "history"})
    assert [e["state"] for e in history] == ["progressing", "paused", "progressing", "rolled_back"]


def trtserve(*args):
    import subprocess
    import sys
    from pathlib import Path

    command = [str(Path(sys.executable).parent / "trtserve"), "rollout", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_the_trtserve_rollout_cli(serving):
    port, _, _ = serving
    url = f"http://127.0.0.1:{port}"
    proc = trtserve(
        "start",
        "seq",
        "--to",
        3,
        "--strategy",
        "bluegreen",
        "--interval",
        "2s",
        "--min-requests",
        20,
        "--max-p99-ratio",  # a shadowed run shares this 2-core machine with the stable path it shadows:
        20,  # its p99 is several times a 1 ms model's; this test is about the CLI, so the p99 gate is wide
        "--url",
        url,
        "--wait",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr  # promoted
    assert "bluegreen 1 -> 3: promoted" in proc.stdout
    proc = trtserve("status", "seq", "--json", "--url", url)
    status = json.loads(proc.stdout)
    assert proc.returncode == 0 and status["state"] == "promoted" and status["serving"] == "3"
    assert {"model", "stable", "candidate", "strategy", "state", "weight", "reason", "intervals"} <= set(status)
    assert all({"candidate", "stable", "agreement"} <= set(i) for i in status["intervals"])
    proc = trtserve("start", "seq", "--to", 9, "--url", url)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no version 9" in proc.stderr
    proc = trtserve("pause", "seq", "--url", url)
    assert proc.returncode == 2 and "cannot pause a rollout that is promoted" in proc.stderr
    proc = trtserve("history", "seq", "--url", url)
    assert proc.returncode == 0 and "promoted" in proc.stdout
    proc = trtserve("status", "seq", "--url", "http://127.0.0.1:9")
    assert proc.returncode == 2 and "cannot reach" in proc.stderr
