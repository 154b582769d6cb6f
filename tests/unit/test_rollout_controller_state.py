"""The decision-maker without Ray: gates judged at start (stable scored offline when it has no score on
the candidate's eval set), the state checkpointed after every change and resumed by a new instance
(what a restarted controller replica does), the interval cut short by the restart counted afresh."""

import asyncio
import json
import time
from types import SimpleNamespace

import pytest

from runtime.serve import rollouts
from tests.fixtures.artifacts import sequence_model


class FakeKV:
    def __init__(self):
        self.store = {}

    def _internal_kv_put(self, key, value, overwrite, namespace):
        self.store[(namespace, key)] = value

    def _internal_kv_get(self, key, namespace):
        return self.store.get((namespace, key))


@pytest.fixture
def controller(tmp_path, monkeypatch):
    kv = FakeKV()
    monkeypatch.setattr(rollouts, "_kv", lambda: kv)
    monkeypatch.setattr(rollouts.serve, "get_replica_context", lambda: SimpleNamespace(app_name="app"))
    repository = tmp_path / "repo"
    sequence_model(repository / "seq" / "1")  # built before eval sets existed
    sequence_model(repository / "seq" / "2")
    sequence_model(repository / "seq" / "3", scale=-1.0, evaluated=True)  # scores 0 where v1 scores 1

    def make():
        return rollouts.RolloutController.func_or_class({"seq": "1"}, {"seq": str(repository)})

    return make, kv


def command(c, action, **args):
    return asyncio.run(c.command("seq", action, {"timeout_s": 0.1, **args}))


def test_a_candidate_scoring_below_stable_is_refused_with_the_figure(controller):
    make, _ = controller
    c = make()
    result = command(c, "start", to="3")
    assert result["status"] == 200 and result["body"]["state"] == "refused"
    assert "eval accuracy 0.0000 below stable's 1.0000 minus margin 0.01" in result["body"]["reason"]
    event = command(c, "history")["body"][-1]
    assert event["figures"]["gates"]["eval"] == {"metric": "accuracy", "candidate": 0.0, "stable": 1.0, "margin": 0.01}


def test_a_latency_budget_without_a_matching_profile_is_a_bad_request(controller):
    make, _ = controller
    result = command(make(), "start", to="2", latency_budget_ms=5, profile={"model": "seq", "version": 1})
    assert result["status"] == 400 and "not of the candidate seq version 2" in result["body"]["error"]


def test_a_restarted_decision_maker_resumes_the_rollout(controller):
    make, kv = controller
    first = make()
    assert command(first, "start", to="2", steps=[50, 100], interval_s=30)["body"]["state"] == "progressing"
    assert command(first, "pause")["body"]["state"] == "paused"
    assert command(first, "resume")["body"]["state"] == "progressing"
    saved = json.loads(next(iter(kv.store.values())))
    assert saved["rollouts"]["seq"]["state"] == "progressing"

    second = make()  # a new replica of the decision-maker, as Ray Serve starts one after a crash
    assert second.rollouts == first.rollouts and second.generation > first.generation
    assert [e["state"] for e in command(second, "history")["body"]] == ["progressing", "paused", "progressing"]
    reply = asyncio.run(second.report("replica-a", first.generation, {"seq": {}}))
    assert reply["rollouts"]["seq"]["spec"]["candidate"] == "2"  # replicas apply the resumed state again
    started = second.rollouts["seq"].interval_started
    second._restored_at -= 10  # replicas have reported for a while
    second.tick(time.time())
    assert second.rollouts["seq"].interval_started > started  # the interval cut short is counted afresh
    assert "seq" not in second._unanchored


def test_a_second_start_while_the_first_judges_its_gates_is_refused(controller):
    make, _ = controller
    c = make()

    async def both():
        first = asyncio.create_task(c.command("seq", "start", {"to": "3", "timeout_s": 0.1}))
        await asyncio.sleep(0)  # the first is scoring stable offline, in a thread
        second = await c.command("seq", "start", {"to": "2", "timeout_s": 0.1})
        return await first, second

    first, second = asyncio.run(both())
    assert first["body"]["state"] == "refused"  # its eval gate
    assert second["status"] == 409 and "being started" in second["body"]["error"]
