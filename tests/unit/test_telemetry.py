"""RayTelemetry's hooks called per request count in the replica; Ray's metrics are set from the publisher
once a second, under the names, tags and descriptions the alerts and dashboards read. No Ray: its metric
classes are recorded here instead."""

from types import SimpleNamespace
from typing import ClassVar

import pytest

from runtime.serve.telemetry import RayTelemetry


class RecordedMetric:
    """Stands for Ray's Counter and Gauge: every call, in order."""

    calls: ClassVar[list[tuple[str, str, float, dict]]] = []

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] = ()) -> None:
        self.name, self.description, self.tag_keys = name, description, tag_keys

    def inc(self, value: float, tags: dict[str, str]) -> None:
        assert set(tags) == set(self.tag_keys), (self.name, tags)
        self.calls.append(("inc", self.name, value, tags))

    def set(self, value: float, tags: dict[str, str]) -> None:
        assert set(tags) == set(self.tag_keys), (self.name, tags)
        self.calls.append(("set", self.name, value, tags))


def _version(name: str, version: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, version=version, warmup_s=None, footprint=None)


@pytest.fixture
def telemetry(monkeypatch):
    """(telemetry, the versions it is told are served): cnn v1 and v2."""
    monkeypatch.setattr("ray.serve.metrics.Gauge", RecordedMetric)
    monkeypatch.setattr("ray.serve.metrics.Counter", RecordedMetric)
    monkeypatch.setattr(RecordedMetric, "calls", [])
    served = [_version("cnn", "1"), _version("cnn", "2")]
    telemetry = RayTelemetry(SimpleNamespace(captures={}, served=lambda: list(served)), publish_interval_s=3600)
    yield telemetry, served
    telemetry.close()


def _published(telemetry: RayTelemetry, *names: str) -> list[tuple]:
    """What one publication called on the metrics named."""
    RecordedMetric.calls.clear()
    telemetry.publisher.flush()
    return [(kind, name, value, tags) for kind, name, value, tags in RecordedMetric.calls if name in names]


def test_no_ray_metric_is_called_per_request(telemetry):
    telemetry, _ = telemetry
    v1 = _version("cnn", "1")
    for status in (200, 200, 503):
        telemetry.in_flight(v1, +1)
        telemetry.request(v1, status, 0.002, 0.001, 0.001)
        telemetry.in_flight(v1, -1)
    telemetry.auth_failed("missing")
    assert RecordedMetric.calls == []


def test_counters_are_published_as_what_they_grew_by(telemetry):
    telemetry, _ = telemetry
    v1, v2 = _version("cnn", "1"), _version("cnn", "2")
    for model, status in ((v1, 200), (v1, 200), (v2, 200), (v1, 503)):
        telemetry.request(model, status, 0.002, 0.001, 0.001)
    telemetry.auth_failed("missing")
    telemetry.auth_failed("scope")
    telemetry.auth_failed("missing")
    requests = ("trtserve_requests", "trtserve_auth_failures")
    assert sorted(_published(telemetry, *requests), key=str) == sorted(
        [
            ("inc", "trtserve_requests", 2, {"model": "cnn", "version": "1", "status": "200"}),
            ("inc", "trtserve_requests", 1, {"model": "cnn", "version": "2", "status": "200"}),
            ("inc", "trtserve_requests", 1, {"model": "cnn", "version": "1", "status": "503"}),
            ("inc", "trtserve_auth_failures", 2, {"reason": "missing"}),
            ("inc", "trtserve_auth_failures", 1, {"reason": "scope"}),
        ],
        key=str,
    )
    assert _published(telemetry, *requests) == []  # nothing new: nothing added
    telemetry.request(v1, 200, 0.002, 0.001, 0.001)
    assert _published(telemetry, *requests) == [
        ("inc", "trtserve_requests", 1, {"model": "cnn", "version": "1", "status": "200"})
    ]


def test_in_flight_is_set_every_publication_and_a_retired_versions_when_it_changes(telemetry):
    telemetry, served = telemetry
    v1, v2 = served
    telemetry.in_flight(v1, +1)
    telemetry.in_flight(v1, +1)
    telemetry.in_flight(v2, +1)
    telemetry.in_flight(v1, -1)
    in_flight = "trtserve_in_flight_requests"
    assert _published(telemetry, in_flight) == [
        ("set", in_flight, 1, {"model": "cnn", "version": "1"}),
        ("set", in_flight, 1, {"model": "cnn", "version": "2"}),
    ]
    served.remove(v1)  # retired, its last request still in flight: unchanged, not set again
    assert [call[2:] for call in _published(telemetry, in_flight)] == [(1, {"model": "cnn", "version": "2"})]
    telemetry.in_flight(v1, -1)
    assert [call[2:] for call in _published(telemetry, in_flight)] == [
        (0, {"model": "cnn", "version": "1"}),
        (1, {"model": "cnn", "version": "2"}),
    ]
    assert [call[2:] for call in _published(telemetry, in_flight)] == [(1, {"model": "cnn", "version": "2"})]


def test_metrics_keep_their_names_descriptions_and_tags(telemetry):
    telemetry, _ = telemetry
    assert (telemetry.requests.name, telemetry.requests.tag_keys) == (
        "trtserve_requests",
        ("model", "version", "status"),
    )
    assert telemetry.requests.description == "Inference requests by HTTP status."
    assert (telemetry.inflight.name, telemetry.inflight.tag_keys) == (
        "trtserve_in_flight_requests",
        ("model", "version"),
    )
    assert telemetry.inflight.description == "Requests in the replica."
    assert telemetry.auth_failures.tag_keys == ("reason",)
