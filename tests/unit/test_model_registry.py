"""A replica's registry (runtime.serve.model_registry), the one list of the versions it serves: a version a
rollout retires leaves the autoscaling stats, the gauges the telemetry refreshes and the drift accounting at
once; a version it adds joins them. No Ray (its metrics are recorded here instead)."""

import asyncio
import json
from types import SimpleNamespace

import pytest

from runtime.engine.manifest import MANIFEST, write_manifest
from runtime.engine.memory import Footprint
from runtime.monitor.reference import REFERENCE_FILE, Reference, write_reference
from runtime.rollout.steps import Rollout, RolloutSpec
from runtime.serve.app_args import ModelSpec
from runtime.serve.autoscaling import REPLICA_DEVICE_BYTES, ServedLoad
from runtime.serve.drift_observer import DriftObserver
from runtime.serve.model import ServedModel
from runtime.serve.model_registry import ModelRegistry
from runtime.serve.telemetry import RayTelemetry
from runtime.serve.traffic import Traffic
from runtime.serve.versions import VersionManager
from tests.fixtures.artifacts import sequence_model

MiB = 2**20


class RecordedMetric:
    """Stands for Ray's Gauge and Counter: what was last set, per tag set."""

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] = ()) -> None:
        self.values: dict[tuple, float] = {}

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.values[tuple(sorted(tags.items()))] = value

    inc = set


def _monitored_sequence_model(root):
    """The sequence model with a reference, so that the drift observer watches it."""
    version = sequence_model(root)
    write_reference(version / REFERENCE_FILE, Reference(format_version=1, rows=1, source="tests", tensors=[]))
    doc = json.loads((version / MANIFEST).read_text())
    doc["reference"] = {"file": REFERENCE_FILE, "rows": 1, "source": "tests"}
    write_manifest(version, {k: v for k, v in doc.items() if k != "files"})


@pytest.fixture
def replica(tmp_path, monkeypatch):
    """A replica's parts wired as the deployment wires them, serving seq v1; each version holds v x 100 MiB
    of device memory."""
    monkeypatch.setattr("ray.serve.metrics.Gauge", RecordedMetric)
    monkeypatch.setattr("ray.serve.metrics.Counter", RecordedMetric)
    repository = tmp_path / "repo"
    for v in (1, 2):
        _monitored_sequence_model(repository / "seq" / str(v))
    registry = ModelRegistry()
    telemetry = RayTelemetry(registry, publish_interval_s=3600)  # published when the test says
    monitor = DriftObserver(telemetry)
    registry.subscribe(added=monitor.register, retired=monitor.forget)

    def load(directory, spec):
        model = ServedModel(directory, spec, telemetry)
        model.warmup()
        model.footprint = Footprint(1 * MiB, int(model.version) * 100 * MiB, "test", model.max_batch_size)
        return model

    spec = ModelSpec(name="seq", version=1)
    registry.add(load(repository / "seq" / "1", spec))
    manager = VersionManager(registry, Traffic(), {"seq": (spec, repository)}, load, grace_s=0)
    yield registry, manager, telemetry, monitor
    monitor.close()
    telemetry.close()
    manager.close()
    for model in registry.served():
        model.close()


def _refreshed(telemetry: RayTelemetry) -> dict[str, set[str]]:
    """The versions whose series one publication set: memory and drift gauges, the latency histogram."""
    gauges = {"memory": telemetry.memory, "drift": telemetry.drift_rows}
    for gauge in gauges.values():
        gauge.values.clear()
    telemetry.publisher.flush()
    published = {name: {dict(tags)["version"] for tags in gauge.values} for name, gauge in gauges.items()}
    return {**published, "latency": {dict(tags)["version"] for tags in telemetry.latency.snapshot()}}


def test_a_version_a_rollout_adds_counts_and_one_it_retires_counts_nowhere(replica):
    registry, manager, telemetry, monitor = replica
    load = ServedLoad()
    rollout = Rollout.begin(RolloutSpec(model="seq", stable="1", candidate="2", keep_previous_s=60), now=0)

    async def scenario():
        await manager.apply({"rollouts": {"seq": rollout.model_dump(mode="json")}}, now=1)
        both = registry["seq"]
        assert load.report(registry.served())[REPLICA_DEVICE_BYTES] == 300 * MiB
        for model in both.values():
            telemetry.drift(model, SimpleNamespace(rows=4, tensors=[]))
            telemetry.request(model, 200, 0.01, 0.001, 0.005)
        assert _refreshed(telemetry) == {"memory": {"1", "2"}, "drift": {"1", "2"}, "latency": {"1", "2"}}
        assert all(monitor.watches(model) for model in both.values())
        first = both["1"]
        monitor.last[("seq", "1")] = SimpleNamespace()  # a window it closed

        promoted = rollout.promote(now=2)
        await manager.apply({"rollouts": {"seq": promoted.model_dump(mode="json")}}, now=100)  # v1 no longer kept
        assert set(registry["seq"]) == {"2"} and manager.closing == [first]
        assert load.report(registry.served())[REPLICA_DEVICE_BYTES] == 200 * MiB
        assert _refreshed(telemetry) == {"memory": {"2"}, "drift": {"2"}, "latency": {"2"}}
        assert not monitor.watches(first) and ("seq", "1") not in monitor.last
        assert first.batcher.on_results is None  # its runs are no longer handed to the drift thread
        await asyncio.sleep(0.05)  # the grace period (0 here) passes: closed
        assert manager.closing == []

    asyncio.run(scenario())


def test_lookups_follow_additions_and_retirements(tmp_path):
    models = [ServedModel(sequence_model(tmp_path / "seq" / str(v))) for v in (1, 2)]
    registry = ModelRegistry(models[:1])
    seen = []
    registry.subscribe(
        added=lambda m: seen.append(("added", m.label)), retired=lambda m: seen.append(("retired", m.label))
    )
    versions = registry["seq"]
    registry.add(models[1])
    assert set(versions) == {"1", "2"} and registry.served() == models  # a view: it follows the registry
    with pytest.raises(TypeError):
        versions["3"] = models[0]  # read-only: versions change through add and retire
    with pytest.raises(ValueError, match="seq v2 is already served"):
        registry.add(models[1])
    assert registry.retire("seq", "1") is models[0] and set(versions) == {"2"}
    with pytest.raises(KeyError, match="seq v1 is not served"):
        registry.retire("seq", "1")
    registry.retire("seq", "2")
    assert "seq" not in registry and registry.get("seq") is None and registry.served() == []
    assert seen == [("added", "seq v2"), ("retired", "seq v1"), ("retired", "seq v2")]
    for model in models:
        model.close()
