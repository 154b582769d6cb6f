"""Which versions of each model a replica holds, set from the deployment's `user_config`.

Ray Serve persists a deployment's `user_config` with the application and hands it to every replica,
at start and whenever it changes, through `reconfigure`, without restarting them: so a rollout's
state lives there, and a replica (re)started mid-rollout comes up holding and routing what the
rollout says. `user_config: {rollouts: {<model>: <rollout state>}}` (runtime.rollout.steps.Rollout).

For each model with a rollout, the replica loads and warms up every version the rollout needs
(`Rollout.loaded`: both during a rollout, the candidate after a rollback, the previous stable while
it is kept after a promotion) before routing any traffic to it, then applies the routing. A version
no longer needed stops taking new requests at once and is closed a grace period later, once what
it holds has finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from runtime.engine.repository import version_dir
from runtime.engine.schema import Schema, one_line
from runtime.rollout.steps import Rollout
from runtime.serve.config import ModelSpec
from runtime.serve.handler import KServeHandler
from runtime.serve.model import ServedModel

log = logging.getLogger("trtserve.server")


class ServerUserConfig(Schema):
    rollouts: dict[str, Rollout] = Field(default_factory=dict)


def parse_user_config(config: dict[str, Any] | None) -> ServerUserConfig:
    try:
        return ServerUserConfig.model_validate(config or {})
    except ValidationError as e:
        raise ValueError(f"user_config: {one_line(e, ServerUserConfig)}") from None


class VersionManager:
    def __init__(
        self,
        handler: KServeHandler,
        specs: dict[str, tuple[ModelSpec, Path]],  # model -> (how to serve it, its repository)
        load: Callable[[Path, ModelSpec], ServedModel],  # build and warm up one version
        grace_s: float = 60.0,
    ) -> None:
        self.handler = handler
        self.specs = specs
        self._load = load
        self.grace_s = grace_s
        self.closing: list[ServedModel] = []

    async def apply(self, config: dict[str, Any] | None, now: float | None = None) -> None:
        user = parse_user_config(config)
        now = time.time() if now is None else now
        for name, rollout in user.rollouts.items():
            if name not in self.specs:
                raise ValueError(f"user_config: rollouts.{name}: this application serves no model {name!r}")
            wanted = rollout.loaded(now)
            held = self.handler.models.get(name, {})
            for version in sorted(wanted - set(held), key=int):
                spec, repository = self.specs[name]
                directory = version_dir(repository, name, version)
                model = await asyncio.to_thread(self._load, directory, spec)  # the event loop keeps serving
                self.handler.add(model)
                log.info("%s: loaded for the rollout", model.label)
            self.handler.traffic.set_routing(name, rollout.routing())
            for version in sorted(set(held) - wanted, key=int):
                self._retire(self.handler.models[name].pop(version))

    def _retire(self, model: ServedModel) -> None:
        """No new requests reach it (it left the handler); closed once the grace period has passed."""
        log.info("%s: no longer needed; closing in %.0f s", model.label, self.grace_s)
        self.closing.append(model)
        asyncio.get_running_loop().call_later(self.grace_s, self._close, model)

    def _close(self, model: ServedModel) -> None:
        if model in self.closing:
            self.closing.remove(model)
            model.close()

    def close(self) -> None:
        for model in list(self.closing):
            self._close(model)
