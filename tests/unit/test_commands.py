"""The typed arguments of each rollout command: defaults, the spec a start builds, and every refusal one
line naming the key at fault."""

import pytest

from runtime.rollout.analysis import Thresholds
from runtime.rollout.commands import COMMANDS, CommandError, NoArgs, Rollback, Start, Wait, parse
from runtime.rollout.steps import RolloutSpec

PROFILE = {"model": "seq", "version": 2, "opt_sizes": {"batch": 4}, "points": [], "machine": {}}


def test_each_action_has_its_arguments_and_their_defaults():
    assert {action: type(parse(action, {})) for action in COMMANDS if action != "start"} == {
        "status": NoArgs,
        "history": NoArgs,
        "pause": Wait,
        "resume": Wait,
        "promote": Wait,
        "rollback": Rollback,
    }
    assert parse("pause", {}).timeout_s == 10.0
    assert parse("rollback", {"reason": "p99 doubled", "timeout_s": 2}) == Rollback(reason="p99 doubled", timeout_s=2)
    assert parse("rollback", {}).reason == "rolled back by hand"


def test_a_start_builds_the_spec_it_describes():
    args = {
        "to": "2",
        "strategy": "shadow",
        "steps": [100],
        "interval_s": 5,
        "failure_limit": 3,
        "shadow_percent": 50,
        "min_requests": 20,
        "max_p99_ms": 40.5,
        "timeout_s": 1,
    }
    start = parse("start", args)
    assert isinstance(start, Start) and start.timeout_s == 1.0
    spec = start.spec("seq", "1")
    expected = RolloutSpec(
        model="seq",
        stable="1",
        candidate="2",
        strategy="shadow",
        steps=[100],
        interval_s=5,
        failure_limit=3,
        shadow_percent=50,
        thresholds=Thresholds(min_requests=20, max_p99_ms=40.5),
    )
    assert spec == expected
    assert parse("start", {"to": 2}).spec("seq", "1") == RolloutSpec(model="seq", stable="1", candidate="2")


@pytest.mark.parametrize(("given", "name"), [(2, "2"), ("2", "2"), ("02", "2"), (123456789, "123456789")])
def test_the_candidate_is_a_version_number_or_its_text(given, name):
    assert parse("start", {"to": given}).to == name


def test_null_is_the_default():
    """The CLI leaves out what it was not given; a hand-written null means the same."""
    assert parse("start", {"to": 2, "steps": None, "max_p99_ms": None}) == parse("start", {"to": 2})
    assert parse("status", {"anything": None}) == NoArgs()


@pytest.mark.parametrize(
    ("action", "args", "message"),
    [
        ("start", {}, "start: to: required key is missing"),
        ("start", {"to": {}}, "start: to: expected a version number"),
        ("start", {"to": 0}, "start: to: expected a version number"),
        ("start", {"to": True}, "start: to: expected a version number"),
        ("start", {"to": 2.0}, "start: to: expected a version number"),
        ("start", {"to": "latest"}, "start: to: expected a version number"),
        ("start", {"to": "9" * 40}, "start: to: expected a version number"),
        ("start", {"to": "2", "steps": "x"}, "start: steps: expected a list"),
        ("start", {"to": "2", "steps": [50, 10]}, "start: steps: expected percents increasing within (0, 100]"),
        ("start", {"to": "2", "steps": []}, "start: steps:"),
        ("start", {"to": "2", "strategy": "blue"}, "start: strategy:"),
        ("start", {"to": "2", "interval_s": "30s"}, "start: interval_s: Input should be a valid number"),
        ("start", {"to": "2", "interval_s": 0}, "start: interval_s:"),
        ("start", {"to": "2", "failure_limit": 1.5}, "start: failure_limit:"),
        ("start", {"to": "2", "shadow_percent": 101}, "start: shadow_percent:"),
        ("start", {"to": "2", "max_error_ratio": "0.1"}, "start: max_error_ratio: Input should be a valid number"),
        ("start", {"to": "2", "min_agreement": True}, "start: min_agreement: Input should be a valid number"),
        ("start", {"to": "2", "min_requests": 0}, "start: min_requests:"),
        ("start", {"to": "2", "max_p99_ms": -1}, "start: max_p99_ms:"),
        ("start", {"to": "2", "keep_previous_s": 0}, "start: keep_previous_s: unknown key"),
        ("start", {"to": "2", "stable": "3"}, "start: stable: unknown key"),
        ("start", {"to": "2", "latency_budget_ms": 5}, "start: profile: latency_budget_ms needs"),
        ("start", {"to": "2", "latency_budget_ms": 5, "profile": []}, "start: profile: expected a mapping"),
        (
            "start",
            {"to": "2", "latency_budget_ms": 5, "profile": {**PROFILE, "points": [1]}},
            "start: profile.points[0]: expected a mapping",
        ),
        ("start", {"to": "2", "timeout_s": 61}, "start: timeout_s:"),
        ("pause", {"timeout_s": "x"}, "pause: timeout_s: Input should be a valid number"),
        ("resume", {"timeout_s": -1}, "resume: timeout_s:"),
        ("promote", {"timeout_s": 1e300}, "promote: timeout_s:"),
        ("pause", {"reason": "why"}, "pause: reason: unknown key"),
        ("rollback", {"reason": 5}, "rollback: reason: expected text"),
        ("rollback", {"reason": ""}, "rollback: reason:"),
        ("rollback", {"reason": "x" * 501}, "rollback: reason:"),
        ("rollback", {"reason": "a\nforged log line"}, "rollback: reason: expected one line of text"),
        ("status", {"timeout_s": 1}, "status: takes no arguments, got 'timeout_s'"),
        ("history", {"x": 1}, "history: takes no arguments"),
        ("history", [], "history: the arguments are a JSON object, got list"),
        ("pause", "x", "pause: the arguments are a JSON object, got str"),
        ("stop", {}, "unknown action 'stop'; expected one of start, status"),
        (["start"], {}, "unknown action ['start']"),
        (None, {}, "unknown action None"),
    ],
)
def test_every_refusal_is_one_line_naming_the_key(action, args, message):
    with pytest.raises(CommandError) as refused:
        parse(action, args)
    text = str(refused.value)
    assert text.startswith(message) and "\n" not in text


def test_a_refusal_quoting_a_large_value_stays_short():
    with pytest.raises(CommandError) as refused:
        parse("start", {"to": ["x" * 100_000]})
    assert str(refused.value).startswith("start: to: expected a version number") and len(str(refused.value)) <= 300


def test_the_candidate_cannot_be_stable():
    with pytest.raises(CommandError, match=r"^start: to: version 1 is already stable$"):
        parse("start", {"to": "1"}).spec("seq", "1")
