"""A replica's versions follow the rollout in its user_config: loaded and warm before traffic, routed,
retired when no longer needed (no Ray: the deployment's reconfigure only calls this)."""

import asyncio

import pytest

from runtime.rollout.steps import Rollout, RolloutSpec
from runtime.serve.app_args import ModelSpec
from runtime.serve.handler import HttpHandler
from runtime.serve.model import ServedModel
from runtime.serve.versions import VersionManager, parse_user_config
from tests.fixtures.artifacts import sequence_model


@pytest.fixture
def replica(tmp_path):
    repository = tmp_path / "repo"
    for v in (1, 2):
        sequence_model(repository / "seq" / str(v))
    loaded = []

    def load(directory, spec):
        model = ServedModel(directory, spec)
        model.warmup()
        loaded.append(model)
        return model

    handler = HttpHandler([load(repository / "seq" / "1", ModelSpec(name="seq", version=1))])
    specs = {"seq": (ModelSpec(name="seq", version=1), repository)}
    manager = VersionManager(handler.models, handler.traffic, specs, load, grace_s=0)
    yield handler, manager, loaded
    for model in loaded:
        model.close()


def config(rollout: Rollout) -> dict:
    return {"rollouts": {"seq": rollout.model_dump(mode="json")}}


def test_the_candidate_is_loaded_warm_then_routed_and_retired_after_promotion(replica):
    handler, manager, loaded = replica
    rollout = Rollout.begin(RolloutSpec(model="seq", stable="1", candidate="2", keep_previous_s=60), now=0)

    async def scenario():
        await manager.apply(config(rollout), now=1)
        assert set(handler.models["seq"]) == {"1", "2"} and handler.models["seq"]["2"].ready
        assert handler.traffic.routing["seq"].weight == 10
        back = rollout.rollback(now=1.5)
        await manager.apply(config(back), now=1.5, wait=False)
        assert set(handler.models["seq"]) == {"1", "2"}  # the candidate stays for inspection
        promoted = rollout.promote(now=2)
        await manager.apply(config(promoted), now=3)  # the previous version is kept for 60 s
        assert set(handler.models["seq"]) == {"1", "2"} and handler.traffic.routing["seq"].stable == "2"
        await manager.apply(config(promoted), now=100)
        assert set(handler.models["seq"]) == {"2"}
        await asyncio.sleep(0.05)  # the grace period (0 here) passes
        assert manager.closing == []

    asyncio.run(scenario())
    assert [m.version for m in loaded] == ["1", "2"]


def test_later_changes_load_in_the_background_while_stable_answers(replica):
    handler, manager, _ = replica
    rollout = Rollout.begin(RolloutSpec(model="seq", stable="1", candidate="2", steps=[100]), now=0)

    async def scenario():
        await manager.apply(config(rollout), now=1, wait=False)  # returns before v2 is loaded
        assert set(handler.models["seq"]) == {"1"} and handler.traffic.routing["seq"].weight == 100
        model, _ = handler.traffic.route("seq", handler.models["seq"], "k")
        assert model.version == "1"  # the candidate is not loaded yet: stable answers
        await manager.settle()
        assert set(handler.models["seq"]) == {"1", "2"}
        assert handler.traffic.route("seq", handler.models["seq"], "k")[0].version == "2"

    asyncio.run(scenario())


def test_bad_user_config_is_one_line_naming_the_key():
    with pytest.raises(ValueError, match=r"^user_config: rollouts"):
        parse_user_config({"rollouts": {"seq": {"spec": {}}}})
    with pytest.raises(ValueError, match="user_config"):
        parse_user_config({"rollout": {}})


def test_a_rollout_of_a_model_not_served_is_refused(replica):
    _, manager, _ = replica
    rollout = Rollout.begin(RolloutSpec(model="other", stable="1", candidate="2"), now=0)
    with pytest.raises(ValueError, match="serves no model 'other'"):
        asyncio.run(manager.apply({"rollouts": {"other": rollout.model_dump(mode="json")}}))
