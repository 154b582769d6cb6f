"""The step machine: promotion through every step, rollback after failure_limit, pause and resume,
rollback after promotion while the previous version is kept, and state that round-trips as JSON."""

import pytest

from runtime.rollout.analysis import Agreement, VersionWindow
from runtime.rollout.steps import Rollout, RolloutError, RolloutSpec

GOOD = VersionWindow(200, 0, 20.0)
SLOW = VersionWindow(200, 0, 90.0)
STABLE = VersionWindow(800, 0, 20.0)
AGREE = Agreement(200, 200)


def start(**kwargs) -> Rollout:
    return Rollout.begin(RolloutSpec(model="cnn", stable="1", candidate="2", **kwargs), now=0.0)


def test_a_canary_advances_through_its_steps_and_is_promoted():
    rollout = start(steps=[10, 50, 100])
    weights = []
    for t in (30, 60, 90):
        weights.append(rollout.routing().weight)
        rollout = rollout.judge(GOOD, STABLE, AGREE, now=t)
    assert weights == [10, 50, 100]
    assert rollout.state == "promoted" and rollout.routing().stable == "2" and rollout.routing().candidate is None
    assert [e.state for e in rollout.history] == ["progressing", "promoted"]
    assert rollout.previous == "1" and rollout.loaded(now=100) == {"1", "2"}
    assert rollout.loaded(now=90 + 1800) == {"2"}  # keep_previous_s has passed


def test_failure_limit_failed_intervals_in_a_row_roll_back():
    rollout = start(failure_limit=2)
    rollout = rollout.judge(SLOW, STABLE, AGREE, now=30)
    assert rollout.state == "progressing" and rollout.failures == 1 and rollout.weight == 10
    rollout = rollout.judge(GOOD, STABLE, AGREE, now=60)  # a pass resets the count and advances
    assert rollout.failures == 0 and rollout.weight == 50
    rollout = rollout.judge(SLOW, STABLE, AGREE, now=90).judge(SLOW, STABLE, AGREE, now=120)
    assert rollout.state == "rolled_back" and "2 failed intervals in a row: p99 90.0 ms" in rollout.reason
    assert rollout.routing().stable == "1" and rollout.routing().candidate is None
    assert rollout.loaded(now=130) == {"1", "2"}  # the candidate stays loaded for inspection


def test_an_interval_with_too_few_requests_is_extended():
    rollout = start()
    extended = rollout.judge(VersionWindow(5, 0, 20.0), STABLE, AGREE, now=30)
    assert (extended.step, extended.interval_started, extended.failures) == (0, 0.0, 0)
    assert extended.intervals[-1]["outcome"] == "extend" and extended.due(now=31)
    # judged again every tick until it has enough: one record for the interval, not one per tick
    for now in (30.5, 31.0, 31.5):
        extended = extended.judge(VersionWindow(6, 0, 20.0), STABLE, AGREE, now=now)
    assert len(extended.intervals) == 1 and extended.intervals[0]["judged"] == 31.5
    passed = extended.judge(GOOD, STABLE, AGREE, now=32)
    assert [i["outcome"] for i in passed.intervals] == ["pass"] and passed.step == 1


def test_at_100_percent_stable_is_judged_by_its_last_figures():
    rollout = start(steps=[50, 100]).judge(GOOD, VersionWindow(200, 0, 40.0), AGREE, now=30)
    assert rollout.weight == 100 and rollout.reference.p99_ms == 40.0
    # stable answers nothing now: its p99 is the reference's 40 ms, so 55 ms passes (< 1.5 x 40)
    promoted = rollout.judge(VersionWindow(200, 0, 55.0), VersionWindow(), AGREE, now=60)
    assert promoted.state == "promoted"


def test_shadow_and_bluegreen_answer_from_stable_until_promoted():
    for strategy in ("shadow", "bluegreen"):
        rollout = start(strategy=strategy, steps=[10, 50], shadow_percent=40)
        routing = rollout.routing()
        assert (routing.weight, routing.shadow_percent, rollout.weight) == (0, 40, 0)
        rollout = rollout.judge(GOOD, STABLE, AGREE, now=30).judge(GOOD, STABLE, AGREE, now=60)
        assert rollout.state == "promoted" and rollout.routing().stable == "2"  # the switch, all at once


def test_pause_holds_the_routing_and_resume_starts_a_new_interval():
    rollout = start().judge(GOOD, STABLE, AGREE, now=30).pause(now=40)
    assert rollout.state == "paused" and rollout.weight == 50 and not rollout.due(now=1000)
    with pytest.raises(RolloutError, match="only a progressing one is judged"):
        rollout.judge(GOOD, STABLE, AGREE, now=50)
    rollout = rollout.resume(now=100)
    assert rollout.state == "progressing" and rollout.interval_started == 100 and not rollout.due(now=110)


def test_rollback_after_promotion_while_the_previous_is_kept():
    rollout = start().promote(now=10)
    back = rollout.rollback(now=20, reason="dashboards look wrong")
    assert back.state == "rolled_back" and back.routing().stable == "1" and back.reason == "dashboards look wrong"
    with pytest.raises(RolloutError, match="no longer kept warm"):
        rollout.rollback(now=10 + 1800)


def test_commands_that_do_not_fit_the_state_are_errors():
    ended = start().rollback(now=5)
    for command in (ended.pause, ended.resume, ended.promote):
        with pytest.raises(RolloutError, match="rolled_back"):
            command(now=6)
    with pytest.raises(RolloutError, match="cannot resume a rollout that is progressing"):
        start().resume(now=1)


def test_a_refused_rollout_keeps_stable():
    refused = Rollout.refuse(RolloutSpec(model="cnn", stable="1", candidate="2"), now=0, reason="parity failed")
    assert refused.ended and refused.routing().stable == "1" and refused.history[0].by == "gate"


def test_state_round_trips_through_json():
    rollout = start().judge(SLOW, STABLE, AGREE, now=30).judge(GOOD, STABLE, AGREE, now=60).pause(now=61)
    again = Rollout.model_validate_json(rollout.model_dump_json())
    assert again == rollout and again.routing() == rollout.routing()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": [50, 10]}, "percents increasing within"),
        ({"steps": [0, 50]}, "percents increasing within"),
        ({"candidate": "1"}, "already stable"),
        ({"failure_limit": 0}, "greater than or equal to 1"),
    ],
)
def test_specs_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RolloutSpec(**{"model": "cnn", "stable": "1", "candidate": "2", **kwargs})
