"""The decision-maker without Ray: gates judged at start (stable scored offline when it has no score on
the candidate's eval set), the state checkpointed after every change and resumed by a new instance
(what a restarted controller replica does), the interval cut short by the restart counted afresh, and
every command checked whole before anything changes: a refusal is a 400 or 409 that changed nothing, and
no body is a 500. What it answers and logs never shows a repository URI's credentials."""

import asyncio
import functools
import json
import logging
import time
from types import SimpleNamespace
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runtime.rollout.commands import CommandReply
from runtime.serve import rollout_controller
from tests.fixtures.artifacts import sequence_model
from tests.fixtures.fuzz import json_values


class FakeKV:
    def __init__(self):
        self.store = {}

    def _internal_kv_put(self, key, value, overwrite, namespace):
        self.store[(namespace, key)] = value

    def _internal_kv_get(self, key, namespace):
        return self.store.get((namespace, key))


KEY, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"


class Written(logging.Handler):
    """A handler that keeps what it writes."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += self.format(record) + "\n"


@pytest.fixture(autouse=True)
def serve_log(monkeypatch):
    """Ray Serve's logger as the decision-maker finds it in its replica, with a handler (here one that keeps
    what it writes); the `trtserve` logger, which the decision-maker sends through it, put back after."""
    handler = Written()
    monkeypatch.setattr(logging.getLogger("ray.serve"), "handlers", [handler])
    ours = logging.getLogger("trtserve")
    handlers, propagate, level = ours.handlers, ours.propagate, ours.level
    yield handler
    ours.handlers, ours.propagate = handlers, propagate
    ours.setLevel(level)


@pytest.fixture
def controller(tmp_path, monkeypatch):
    kv = FakeKV()
    monkeypatch.setattr(rollout_controller, "_kv", lambda: kv)
    monkeypatch.setattr(rollout_controller.serve, "get_replica_context", lambda: SimpleNamespace(app_name="app"))
    repository = tmp_path / "repo"
    sequence_model(repository / "seq" / "1")  # built before eval sets existed
    sequence_model(repository / "seq" / "2")
    sequence_model(repository / "seq" / "3", scale=-1.0, evaluated=True)  # scores 0 where v1 scores 1

    def make():
        return rollout_controller.RolloutController.func_or_class({"seq": "1"}, {"seq": str(repository)})

    return make, kv


def command(c, action, **args):
    """A command as the handler passes it; those that change the rollout wait at most 0.1 s for replicas."""
    waits = {"timeout_s": 0.1} if action not in ("status", "history") else {}
    return asyncio.run(c.command("seq", action, {**waits, **args}))


def test_a_candidate_scoring_below_stable_is_refused_with_the_figure(controller):
    make, _ = controller
    c = make()
    result = command(c, "start", to="3")
    assert result.refused is None and result.result["state"] == "refused"
    assert "eval accuracy 0.0000 below stable's 1.0000 minus margin 0.01" in result.result["reason"]
    event = command(c, "history").result[-1]
    assert event["figures"]["gates"]["eval"] == {"metric": "accuracy", "candidate": 0.0, "stable": 1.0, "margin": 0.01}


def test_a_latency_budget_without_a_matching_profile_is_a_bad_request(controller):
    make, _ = controller
    profile = {"model": "seq", "version": 1, "opt_sizes": {"batch": 1}, "points": []}
    result = command(make(), "start", to="2", latency_budget_ms=5, profile=profile)
    assert result.refused == "invalid" and "not of the candidate seq version 2" in result.error


def test_a_restarted_decision_maker_resumes_the_rollout(controller):
    make, kv = controller
    first = make()
    assert command(first, "start", to="2", steps=[50, 100], interval_s=30).result["state"] == "progressing"
    assert command(first, "pause").result["state"] == "paused"
    assert command(first, "resume").result["state"] == "progressing"
    saved = json.loads(next(iter(kv.store.values())))
    assert saved["rollouts"]["seq"]["state"] == "progressing"

    second = make()  # a new replica of the decision-maker, as Ray Serve starts one after a crash
    assert second.rollouts == first.rollouts and second.generation > first.generation
    assert [e["state"] for e in command(second, "history").result] == ["progressing", "paused", "progressing"]
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
    assert first.result["state"] == "refused"  # its eval gate
    assert second.refused == "conflict" and "being started" in second.error


# --- commands: checked whole before anything changes -------------------------------------------------


def in_state(make, state):
    """A decision-maker whose rollout of seq (1 -> 2) is in `state` (None: never started)."""
    c = make()
    if state is not None:
        assert command(c, "start", to="2", steps=[50, 100]).refused is None
    if state == "paused":
        assert command(c, "pause").refused is None
    if state == "promoted":
        assert command(c, "promote").refused is None
    return c


def snapshot(c, kv):
    """Everything a command may change: the rollouts, the generation, the checkpoint."""
    rollouts = {m: r.model_dump(mode="json") for m, r in c.rollouts.items()}
    return rollouts, c.generation, dict(kv.store), set(c._judging)


NOT_A_MAPPING = [[], "x", 3, None]


@pytest.mark.parametrize(
    ("state", "action", "args"),
    [
        *[
            (None, "start", args)
            for args in [
                {"to": {}},
                {"to": "2", "steps": "x"},
                {"to": "2", "steps": [50, 10]},
                {"to": "2", "bogus": 1},
                {"to": "2", "max_error_ratio": "0.1"},
                {"to": "2", "min_requests": 0},
                {"to": "2", "strategy": 1},
                {"to": "2", "timeout_s": "x"},
                {"to": "2", "latency_budget_ms": 5},
                {
                    "to": "2",
                    "latency_budget_ms": 5,
                    "profile": {"model": "a\nb", "version": 2, "opt_sizes": {}, "points": []},
                },
                {"to": "1"},  # already stable
                {"to": "9"},  # not in the repository
                *NOT_A_MAPPING,
            ]
        ],
        *[
            (state, action, args)
            for state, action in [("progressing", "pause"), ("paused", "resume"), ("progressing", "promote")]
            for args in [{"timeout_s": "x"}, {"timeout_s": -1}, {"timeout_s": 1e9}, {"x": 1}, *NOT_A_MAPPING]
        ],
        *[
            ("progressing", "rollback", args)
            for args in [{"reason": 5}, {"reason": "a\nb"}, {"reason": "x" * 10_000}, {"timeout_s": "x"}]
        ],
        *[
            ("progressing", action, args)
            for action in ("status", "history")
            for args in [{"timeout_s": 1}, {"x": 1}, *NOT_A_MAPPING]
        ],
        ("progressing", "stop", {}),
        ("progressing", ["pause"], {}),
    ],
)
def test_a_bad_command_is_a_bad_request_that_changes_nothing(controller, state, action, args):
    make, kv = controller
    c = in_state(make, state)
    before = snapshot(c, kv)
    result = asyncio.run(c.command("seq", action, args))
    assert result.refused == "invalid", result
    assert result.error and "\n" not in result.error
    assert snapshot(c, kv) == before


def test_a_pause_with_a_bad_timeout_does_not_pause(controller):
    """The review's case: answered 400 and paused anyway."""
    make, _ = controller
    c = in_state(make, "progressing")
    result = asyncio.run(c.command("seq", "pause", {"timeout_s": "x"}))
    assert result == CommandReply(refused="invalid", error="pause: timeout_s: Input should be a valid number")
    assert c.rollouts["seq"].state == "progressing"


def test_an_unexpected_failure_is_an_internal_error_that_changes_nothing(controller, monkeypatch, serve_log):
    make, kv = controller
    c = in_state(make, None)

    def broken(*args, **kwargs):
        raise RuntimeError(f"internal detail: s3://{KEY}:{SECRET}@bucket/seq/2/manifest.json")

    monkeypatch.setattr(rollout_controller, "read_manifest", broken)
    before = snapshot(c, kv)
    result = asyncio.run(c.command("seq", "start", {"to": "2", "timeout_s": 0.1}))
    assert result == CommandReply(failed=True)
    assert snapshot(c, kv) == before
    # The cause is in the replica's log (Serve's handlers), with its traceback, scrubbed of credentials.
    assert "trtserve.rollouts ERROR a rollout command on model 'seq' failed\nTraceback" in serve_log.text
    assert "RuntimeError: internal detail: s3://***@bucket/seq/2/manifest.json" in serve_log.text
    assert KEY not in serve_log.text and "K7MDENG" not in serve_log.text


def test_a_stable_version_that_cannot_be_scored_is_a_bad_request_without_credentials(controller, monkeypatch):
    """The eval gate scores stable offline (it has no score on the candidate's eval set); reading it failed."""
    make, kv = controller
    c = make()

    def unreadable(*args, **kwargs):
        raise OSError(f"When reading s3://{KEY}:{SECRET}@bucket/seq/1/model.onnx: AWS Error ACCESS_DENIED")

    monkeypatch.setattr(rollout_controller, "score_version", unreadable)
    before = snapshot(c, kv)
    result = command(c, "start", to="3")
    error = "eval gate: scoring version 1 failed: OSError: When reading s3://***@bucket/seq/1/model.onnx: AWS Error"
    assert result == CommandReply(refused="invalid", error=f"{error} ACCESS_DENIED")
    assert snapshot(c, kv) == before


def test_a_checkpoint_that_cannot_be_written_changes_nothing(controller, monkeypatch):
    make, kv = controller
    c = in_state(make, "progressing")
    before = snapshot(c, kv)

    def unwritable(*args, **kwargs):
        raise ConnectionError("GCS unreachable")

    monkeypatch.setattr(kv, "_internal_kv_put", unwritable)
    assert command(c, "pause") == CommandReply(failed=True)
    assert snapshot(c, kv) == before


ACTIONS = ["start", "status", "pause", "resume", "promote", "rollback", "history"]
KEYS = ["to", "strategy", "steps", "interval_s", "failure_limit", "shadow_percent", "min_requests", "max_p99_ms"]
KEYS += ["max_error_ratio", "latency_budget_ms", "profile", "timeout_s", "reason", "action", "keep_previous_s"]
PLAUSIBLE = st.sampled_from(
    ["1", "2", "3", "9", "02", 1, 2, 0, -1, 0.5, 50, 100, 1e9, True, "", "x", [50, 100], [100], [], "canary", "shadow"]
)


def mostly(real, other):
    """`real` four times in five, else `other`."""
    return st.integers(0, 4).flatmap(lambda n: other if n == 0 else real)


# Mostly real actions with real keys, so that commands get past the parsing too (and some are carried out).
ACTION = mostly(st.sampled_from(ACTIONS), json_values)
ARGS = mostly(
    st.dictionaries(st.sampled_from(KEYS), PLAUSIBLE, max_size=3)
    | st.fixed_dictionaries({"to": st.sampled_from(["1", "2", 2, "9"])})  # starts that can be carried out
    | st.fixed_dictionaries({"to": st.just("2"), "steps": PLAUSIBLE, "timeout_s": PLAUSIBLE}),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), PLAUSIBLE | json_values, max_size=6)
    | json_values,
)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "repo"
    sequence_model(root / "seq" / "1")
    sequence_model(root / "seq" / "2")
    return root


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    state=st.sampled_from([None, "progressing", "paused", "promoted"]),
    action=ACTION,
    args=ARGS,
)
def test_no_command_body_is_a_server_error_and_a_refusal_changes_nothing(repository, state, action, args):
    kv = FakeKV()
    context = SimpleNamespace(app_name="app")
    controller = rollout_controller.RolloutController.func_or_class
    with (
        patch.object(rollout_controller, "_kv", lambda: kv),
        patch.object(rollout_controller.serve, "get_replica_context", lambda: context),
        patch.object(controller, "_wait_applied", no_wait),  # whatever timeout_s asks: no replica reports here
    ):
        c = in_state(functools.partial(controller, {"seq": "1"}, {"seq": str(repository)}), state)
        before = snapshot(c, kv)
        result = asyncio.run(c.command("seq", action, args))
    event(f"{action if isinstance(action, str) else 'junk'} {result.refused or 'done'}")
    assert not result.failed, result
    if result.refused is not None:
        assert snapshot(c, kv) == before
        assert result.error and "\n" not in result.error


async def no_wait(self, timeout_s: float) -> bool:
    return False
