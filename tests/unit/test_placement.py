"""Replica sizing: actor options from a measured need, refusal with figures, the app's config surface."""

import pytest

from runtime.serve.placement import Free, PlacementError, ReplicaNeed, actor_options, with_versions

MiB = 2**20
GiB = 2**30


def cpu_need(host_mb=200):
    return ReplicaNeed(host_mb * MiB, None, None, {"cnn": {}})


def test_memory_is_the_measured_need_plus_headroom():
    assert actor_options(cpu_need(200), None, 0.25, Free(8 * GiB)) == {"memory": 250 * MiB}


def test_gpu_fraction_from_device_memory_rounded_up():
    need = ReplicaNeed(300 * MiB, 3 * GiB, 80 * GiB, {"minilm": {}})
    options = actor_options(need, None, 0.2, Free(64 * GiB, 70 * GiB))
    assert options["num_gpus"] == pytest.approx(0.05)  # 3.6 / 80 = 0.045 -> 0.05
    tiny = ReplicaNeed(300 * MiB, 10 * MiB, 80 * GiB, {})
    assert actor_options(tiny, None, 0.0, None)["num_gpus"] == 0.01  # never zero


def test_what_the_config_sets_wins():
    options = actor_options(cpu_need(), {"memory": 1 * GiB, "num_cpus": 2}, 0.2, Free(8 * GiB))
    assert options == {"memory": 1 * GiB, "num_cpus": 2}


def test_a_replica_that_cannot_fit_is_refused_with_figures():
    with pytest.raises(PlacementError) as e:
        actor_options(cpu_need(1000), None, 0.2, Free(500 * MiB))
    message = str(e.value)
    assert "cnn" in message and "1200 MiB" in message and "500 MiB free" in message and "20% headroom" in message
    gpu = ReplicaNeed(300 * MiB, 10 * GiB, 16 * GiB, {"big": {}})
    with pytest.raises(PlacementError, match=r"GPU memory .* 4096 MiB free"):
        actor_options(gpu, None, 0.0, Free(64 * GiB, 4 * GiB))


def test_gpu_need_without_the_gpu_size_is_refused():
    with pytest.raises(PlacementError, match="num_gpus"):
        actor_options(ReplicaNeed(100 * MiB, 1 * GiB, None, {}), None, 0.1, None)


def test_a_replica_is_sized_for_a_rollouts_two_versions_of_each_model():
    models = {"cnn": {"host_bytes": 40 * MiB, "device_bytes": 1 * GiB}, "minilm": {"host_bytes": 100 * MiB}}
    need = ReplicaNeed(300 * MiB, 2 * GiB, 80 * GiB, models)
    two = with_versions(need, 2)
    assert two.host_bytes == 440 * MiB and two.device_bytes == 3 * GiB  # the process + each model once more
    assert with_versions(need, 1) == need  # no rollouts planned
    assert with_versions(cpu_need(200), 2).device_bytes is None
    assert actor_options(two, None, 0.25, Free(8 * GiB))["memory"] == 550 * MiB


def test_app_config_surface(built_like_repository):
    from runtime.serve.app_args import parse_args
    from runtime.serve.autoscaling import ray_autoscaling_config
    from runtime.serve.placement import replica_need

    base = {"repository": str(built_like_repository), "models": [{"name": "seq"}]}
    args = parse_args(
        {**base, "placement": {"host_mb": 300}, "autoscaling": {"max_replicas": 6, "memory_budget_mb": 900}}
    )
    need = replica_need(args)
    assert need.host_bytes == 300 * MiB and need.device_bytes is None
    config = ray_autoscaling_config(args.autoscaling, need)
    assert config["max_replicas"] == 6
    assert config["policy"]["policy_function"] == "runtime.serve.autoscaling:MemoryAwarePolicy"
    assert config["policy"]["policy_kwargs"] == {"host_budget_bytes": 900 * MiB, "replica_host_bytes": 300 * MiB}
    with pytest.raises(ValueError, match=r"autoscaling\.max_replica: unknown key; expected one of min_replicas"):
        parse_args({**base, "autoscaling": {"max_replica": 2}})
    with pytest.raises(ValueError, match="not both"):
        parse_args({**base, "autoscaling": {}, "num_replicas": 2})
    with pytest.raises(ValueError, match=r"models\[0\].max_batch_size: expected an integer >= 1, got 0"):
        parse_args({**base, "models": [{"name": "seq", "max_batch_size": 0}]})
    with pytest.raises(ValueError, match=r"models\[0\]: .*no version 3 of model 'seq'"):
        parse_args({**base, "models": [{"name": "seq", "version": 3}]})
    assert parse_args({**base, "models": ["seq"]}).models[0].version == "latest"
    assert replica_need(parse_args({**base, "placement": {"measure": False}})) is None
    assert parse_args(base).placement.versions_per_model == 2
    with pytest.raises(ValueError, match=r"placement\.versions_per_model"):
        parse_args({**base, "placement": {"versions_per_model": 0}})


@pytest.fixture
def built_like_repository(tmp_path):
    from tests.fixtures.artifacts import sequence_model

    sequence_model(tmp_path / "seq" / "1")
    return tmp_path


def test_the_example_serve_configs_parse(tmp_path):
    """configs/serve/*.yaml: every app's args pass the same validation `serve run` applies."""
    import yaml

    from runtime.serve.app_args import parse_args
    from runtime.serve.autoscaling import ray_autoscaling_config
    from tests.conftest import ROOT
    from tests.fixtures.artifacts import sequence_model

    for name in ("cnn", "minilm"):
        sequence_model(tmp_path / name / "1")
    for path in sorted((ROOT / "configs/serve").glob("*.yaml")):
        for app in yaml.safe_load(path.read_text())["applications"]:
            args = parse_args({**app["args"], "repository": str(tmp_path)})
            if args.autoscaling is not None:
                policy = ray_autoscaling_config(args.autoscaling, None)["policy"]
                assert policy["policy_function"] == "runtime.serve.autoscaling:MemoryAwarePolicy", path


def test_a_measurement_is_kept_until_what_it_depends_on_changes(built_like_repository, tmp_path, monkeypatch):
    """A rebuild of the same models reads the kept figure; a changed manifest or spec measures again; a
    damaged cache file is measured over, never trusted."""
    import json

    from runtime.serve import placement
    from runtime.serve.app_args import ModelSpec

    measured = []

    def fake_measure(repository, models):
        measured.append([m.name for m in models])
        return cpu_need(100 + len(measured))

    monkeypatch.setattr(placement, "measure_replica", fake_measure)
    cache = tmp_path / "cache"
    specs = [ModelSpec(name="seq", version=1)]
    first = placement.cached_measurement(built_like_repository, specs, cache)
    again = placement.cached_measurement(built_like_repository, specs, cache)
    assert first == again and len(measured) == 1
    assert [p.suffix for p in cache.iterdir()] == [".json"]  # no temporary file left behind

    placement.cached_measurement(built_like_repository, [ModelSpec(name="seq", version=1, max_batch_size=2)], cache)
    assert len(measured) == 2

    manifest = built_like_repository / "seq" / "1" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["name_note"] = "rebuilt"
    manifest.write_text(json.dumps(doc))
    changed = placement.cached_measurement(built_like_repository, specs, cache)
    assert len(measured) == 3 and changed != first

    (cache / f"{placement.measurement_key(built_like_repository, specs)}.json").write_text("{not json")
    placement.cached_measurement(built_like_repository, specs, cache)
    assert len(measured) == 4
