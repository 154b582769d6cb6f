"""A replica's part in a rollout, through the HTTP handler without a web server: routing between loaded
versions, pinned paths, mirrored runs compared after the answer, bounded mirror work, and only routed
requests that were not the client's error in the figures a rollout is judged on."""

import asyncio

import numpy as np
import orjson
import pytest

from runtime.rollout.analysis import VersionWindow
from runtime.rollout.intervals import interval_figures
from runtime.rollout.routing import Routing
from runtime.serve.handler import HttpHandler
from runtime.serve.model import ServedModel
from runtime.serve.traffic import Traffic
from tests.fixtures.artifacts import sequence_model

BODY = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]})


@pytest.fixture
def versions(tmp_path):
    """seq v1 and v3 (the same outputs), v2 (doubled is 3x, not 2x: it disagrees)."""
    models = [ServedModel(sequence_model(tmp_path / "seq" / str(v), scale=3.0 if v == 2 else 2.0)) for v in (1, 2, 3)]
    for model in models:
        model.warmup()
    yield models
    for model in models:
        model.close()


async def infer(handler, n, path="/v2/models/seq/infer", key="k"):
    answers = []
    for i in range(n):
        response = await handler.handle("POST", path, {"x-request-id": f"{key}{i}"}, BODY)
        assert response.status == 200, response.body
        answers.append(orjson.loads(response.body)["model_version"])
    await handler.traffic.drain()
    return answers


def test_without_routing_the_latest_version_answers(versions):
    handler = HttpHandler(versions[:2])
    assert set(asyncio.run(infer(handler, 5))) == {"2"}


def test_canary_splits_sticky_and_compares_with_stable(versions):
    handler = HttpHandler(versions[:2])
    handler.traffic.set_routing("seq", Routing("1", "2", weight=50))

    async def twice():
        return await infer(handler, 200), await infer(handler, 200)

    answers, again = asyncio.run(twice())
    assert 60 < answers.count("2") < 140 and set(answers) == {"1", "2"}
    assert again == answers  # the same keys, the same versions
    report = handler.traffic.report("seq")
    agreement = report["agreement"]["1/2"]
    assert agreement["compared"] == 400 - 2 * answers.count("1") and agreement["agreed"] == 0  # v2 disagrees
    assert report["counts"]["1/ran"]["requests"] == 400  # what it answered, and the canaried run there too
    assert report["counts"]["2/answered"]["requests"] == report["counts"]["2/ran"]["requests"] == agreement["compared"]


def test_shadow_answers_from_stable_and_an_identical_candidate_agrees(versions):
    handler = HttpHandler([versions[0], versions[2]])
    handler.traffic.set_routing("seq", Routing("1", "3", shadow_percent=100))
    assert set(asyncio.run(infer(handler, 50))) == {"1"}
    report = handler.traffic.report("seq")
    assert report["agreement"]["1/3"]["compared"] == 50 and report["agreement"]["1/3"]["agreed"] == 50
    assert report["counts"]["3/ran"]["requests"] == 50 and "3/answered" not in report["counts"]


def test_a_pinned_version_is_reached_whatever_the_routing(versions):
    handler = HttpHandler(versions[:2])
    handler.traffic.set_routing("seq", Routing("1", "2", weight=100))
    assert set(asyncio.run(infer(handler, 5, "/v2/models/seq/versions/1/infer"))) == {"1"}
    meta = orjson.loads(asyncio.run(handler.handle("GET", "/v2/models/seq", {}, b"")).body)
    assert meta["versions"] == ["1"]  # unpinned metadata follows stable
    missing = asyncio.run(handler.handle("POST", "/v2/models/seq/versions/9/infer", {}, BODY))
    assert missing.status == 404


def test_a_candidate_not_loaded_yet_leaves_stable_answering(versions):
    handler = HttpHandler(versions[:1])
    handler.traffic.set_routing("seq", Routing("1", "2", weight=100, shadow_percent=100))
    assert set(asyncio.run(infer(handler, 5))) == {"1"}
    assert handler.traffic.report("seq")["agreement"] == {}


def test_mirror_work_beyond_the_bound_is_dropped_and_counted(versions):
    traffic = Traffic(max_mirrored=0)
    handler = HttpHandler([versions[0], versions[2]], traffic=traffic)
    traffic.set_routing("seq", Routing("1", "3", shadow_percent=100))
    assert set(asyncio.run(infer(handler, 10))) == {"1"}
    assert traffic.report("seq")["dropped"] == 10 and traffic.report("seq")["agreement"] == {}


def test_answers_are_counted_per_version_and_client_errors_apart(versions):
    handler = HttpHandler(versions[:1])
    asyncio.run(infer(handler, 3))
    bad = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0]}]})
    assert asyncio.run(handler.handle("POST", "/v2/models/seq/infer", {}, bad)).status == 400
    counts = handler.traffic.report("seq")["counts"]["1/answered"]
    assert counts["requests"] == 3 and counts["server_errors"] == 0 and counts["client_errors"] == 1
    np.testing.assert_equal(sum(counts["buckets"].values()), 3)  # a 400 is the client's: no latency either


def figures(traffic: Traffic, stable="1", candidate="2"):
    """What the decision-maker would judge from this replica's report alone: (candidate, stable) windows."""
    candidate_window, stable_window, _, _ = interval_figures({"replica": traffic.report("seq")}, {}, stable, candidate)
    return candidate_window, stable_window


def test_pinned_requests_are_reported_apart_and_never_judged(versions):
    """A client with only the infer scope pins the candidate with failing or slow requests: the rollout's
    figures do not move; the same requests routed to it do count."""
    stable, candidate = versions[:2]
    traffic = Traffic()
    traffic.set_routing("seq", Routing("1", "2", weight=50))
    for _ in range(50):
        traffic.ran(candidate, 500, 9.0, pinned=True)
        traffic.answered(candidate, 500, 9.0, pinned=True)
    report = traffic.report("seq")
    assert report["counts"]["2/pinned_ran"]["requests"] == report["counts"]["2/pinned_answered"]["requests"] == 50
    assert figures(traffic) == (VersionWindow(), VersionWindow())
    traffic.ran(candidate, 500, 9.0)
    traffic.ran(stable, 200, 0.001)
    candidate_window, stable_window = figures(traffic)
    assert (candidate_window.requests, candidate_window.server_errors, stable_window.requests) == (1, 1, 1)


def test_client_errors_are_never_judged_and_overload_is(versions):
    candidate = versions[1]
    traffic = Traffic()
    for status in (400, 404, 413, 422):
        traffic.ran(candidate, status, 30.0)  # slow refusals: neither requests, errors nor latency
    assert figures(traffic)[0] == VersionWindow()
    traffic.ran(candidate, 200, 0.001)
    traffic.ran(candidate, 503, 0.0)
    traffic.ran(candidate, 504, 1.0)
    window = figures(traffic)[0]
    assert (window.requests, window.server_errors) == (3, 2) and window.p99_ms < 1100


def test_through_the_handler_only_routed_requests_reach_the_figures(versions):
    handler = HttpHandler(versions[:2])
    handler.traffic.set_routing("seq", Routing("1", "2", weight=100))
    asyncio.run(infer(handler, 5, "/v2/models/seq/versions/2/infer"))
    asyncio.run(infer(handler, 5, "/v2/models/seq/versions/1/infer"))
    bad = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0]}]})
    for _ in range(5):
        assert asyncio.run(handler.handle("POST", "/v2/models/seq/infer", {}, bad)).status == 400
    candidate_window, stable_window = figures(handler.traffic)
    assert (candidate_window.requests, stable_window.requests) == (0, 0)
    counts = handler.traffic.report("seq")["counts"]
    assert counts["2/pinned_answered"]["requests"] == counts["1/pinned_ran"]["requests"] == 5
    assert asyncio.run(infer(handler, 7)) == ["2"] * 7  # routed: the candidate answers, and is judged
    assert figures(handler.traffic)[0].requests == 7


def test_canary_is_sticky_on_the_body_id_whatever_the_request_id(versions):
    """A client retrying one request under new X-Request-IDs, with the same body "id", reaches one version."""
    handler = HttpHandler(versions[:2])
    handler.traffic.set_routing("seq", Routing("1", "2", weight=50))
    doc = orjson.loads(BODY)

    async def answers_for(body_id: str) -> set[str]:
        body = orjson.dumps({**doc, "id": body_id})
        seen = set()
        for attempt in range(8):
            response = await handler.handle("POST", "/v2/models/seq/infer", {"x-request-id": f"retry{attempt}"}, body)
            assert response.status == 200, response.body
            seen.add(orjson.loads(response.body)["model_version"])
        await handler.traffic.drain()
        return seen

    per_id = [asyncio.run(answers_for(f"req-{i}")) for i in range(30)]
    assert all(len(seen) == 1 for seen in per_id)
    assert {v for seen in per_id for v in seen} == {"1", "2"}  # and the ids still split between the versions


def test_a_pinned_request_is_never_mirrored(versions):
    handler = HttpHandler([versions[0], versions[2]])
    handler.traffic.set_routing("seq", Routing("1", "3", weight=50, shadow_percent=100))
    assert asyncio.run(infer(handler, 10, "/v2/models/seq/versions/1/infer")) == ["1"] * 10
    assert asyncio.run(infer(handler, 10, "/v2/models/seq/versions/3/infer")) == ["3"] * 10
    report = handler.traffic.report("seq")
    assert report["agreement"] == {} and report["dropped"] == 0
    assert {key for key in report["counts"] if key.endswith("/ran")} == set()


def test_with_the_applications_secret_no_client_can_pick_ids_the_candidate_answers(versions):
    """Routing hashes a request's key with the application's secret: sticky for one secret, but which ids
    reach the candidate cannot be worked out from the public hash (runtime.rollout.routing.point)."""
    by_key = {}
    for secret in (b"", b"secret-a", b"secret-b", b"secret-a"):
        traffic = Traffic(routing_key=secret)
        traffic.set_routing("seq", Routing("1", "2", weight=50))
        versions_by_name = {m.version: m for m in versions[:2]}
        answered = frozenset(
            i for i in range(400) if traffic.route("seq", versions_by_name, f"id-{i}")[0].version == "2"
        )
        by_key.setdefault(secret, set()).add(answered)
    assert all(len(sets) == 1 for sets in by_key.values())  # sticky: one secret, one split
    public, a, b = (next(iter(by_key[k])) for k in (b"", b"secret-a", b"secret-b"))
    assert 120 < len(a) < 280 and a != public and a != b
    assert len(a & public) < 0.7 * len(a)  # knowing the public split says little about the keyed one
