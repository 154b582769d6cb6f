"""Routing between a model's stable and candidate versions: weights, stickiness per request key, pinning."""

import pytest

from runtime.rollout.routing import Route, Routing, point


def test_without_a_candidate_stable_answers_everything():
    assert Routing("1").route("a") == Route("1")


def test_canary_weight_splits_by_key_and_mirrors_to_stable():
    routing = Routing("1", "2", weight=20)
    routes = [routing.route(f"request-{i}") for i in range(10_000)]
    to_candidate = sum(r.answer == "2" for r in routes) / len(routes)
    assert to_candidate == pytest.approx(0.20, abs=0.02)
    assert all(r.mirror == "1" for r in routes if r.answer == "2")  # both outputs exist to compare
    assert all(r.mirror is None for r in routes if r.answer == "1")


def test_the_same_key_reaches_the_same_version():
    routing = Routing("1", "2", weight=50)
    for i in range(200):
        key = f"retry-me-{i}"
        assert len({routing.route(key) for _ in range(5)}) == 1


def test_raising_the_weight_keeps_canaried_keys_on_the_candidate():
    keys = [f"k{i}" for i in range(2000)]
    at10 = {k for k in keys if Routing("1", "2", weight=10).route(k).answer == "2"}
    at50 = {k for k in keys if Routing("1", "2", weight=50).route(k).answer == "2"}
    assert at10 <= at50


def test_shadow_answers_from_stable_and_mirrors_to_the_candidate():
    routing = Routing("1", "2", shadow_percent=30)
    routes = [routing.route(f"r{i}") for i in range(10_000)]
    assert all(r.answer == "1" for r in routes)
    assert sum(r.mirror == "2" for r in routes) / len(routes) == pytest.approx(0.30, abs=0.02)
    everything = Routing("1", "2", shadow_percent=100)
    assert {everything.route(f"r{i}").mirror for i in range(100)} == {"2"}


def test_a_pinned_version_is_always_reached():
    routing = Routing("1", "2", weight=100)
    assert routing.route("x", pinned="1") == Route("1")
    assert routing.route("x", pinned="7") == Route("7")


def test_requests_without_a_key_are_split_too():
    routing = Routing("1", "2", weight=50)
    answers = {routing.route(None).answer for _ in range(200)}
    assert answers == {"1", "2"}


@pytest.mark.parametrize("kwargs", [{"weight": 120}, {"weight": -1}, {"shadow_percent": 101}])
def test_shares_outside_0_100_are_refused(kwargs):
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        Routing("1", "2", **kwargs)


def test_a_share_without_a_candidate_is_refused():
    with pytest.raises(ValueError, match="needs a candidate"):
        Routing("1", weight=10)


def test_points_are_stable_and_salted():
    assert point("abc", "canary") == point("abc", "canary")
    assert point("abc", "canary") != point("abc", "shadow")
    assert 0 <= point("abc", "canary") < 100
