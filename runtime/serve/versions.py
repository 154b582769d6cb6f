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
from runtime.serve.app_args import ModelSpec
from runtime.serve.model import ServedModel
from runtime.serve.model_registry import ModelRegistry
from runtime.serve.traffic import Traffic

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
        registry: ModelRegistry,  # the replica's versions: added here when loaded, retired when no longer wanted
        traffic: Traffic,
        specs: dict[str, tuple[ModelSpec, str | Path]],  # model -> (how to serve it, its repository)
        load: Callable[[Path, ModelSpec], ServedModel],  # build and warm up one version
        grace_s: float = 60.0,
    ) -> None:
        self.registry = registry
        self.traffic = traffic
        self.specs = specs
        self._load = load
        self.grace_s = grace_s
        self.closing: list[ServedModel] = []
        self._loading: dict[tuple[str, str], asyncio.Task] = {}

    async def apply(self, config: dict[str, Any] | None, now: float | None = None, wait: bool = True) -> None:
        """Route as the rollouts say and load the versions they need. wait=False returns at once and loads in
        the background: Ray Serve takes a replica out of traffic while `reconfigure` runs (ray#54509), and
        until a version is loaded its traffic stays with stable (runtime.serve.traffic). A replica's first
        call waits: it takes no traffic before it holds what the rollout needs."""
        user = parse_user_config(config)
        now = time.time() if now is None else now
        for name in user.rollouts:
            if name not in self.specs:
                raise ValueError(f"user_config: rollouts.{name}: this application serves no model {name!r}")
        loads = []
        for name, rollout in user.rollouts.items():
            wanted = rollout.loaded(now)
            self.traffic.set_routing(name, rollout.routing())
            held = set(self.registry.get(name, {}))
            for version in sorted(held - wanted, key=int):
                self._retire(self.registry.retire(name, version))
            loads += [self._loading_of(name, v) for v in sorted(wanted - held, key=int)]
        if wait and loads:
            await asyncio.gather(*loads)

    def _loading_of(self, name: str, version: str) -> asyncio.Task:
        key = (name, version)
        if key not in self._loading:
            task = asyncio.get_running_loop().create_task(self._load_version(name, version))
            self._loading[key] = task
            task.add_done_callback(lambda _: self._loading.pop(key, None))
        return self._loading[key]

    async def _load_version(self, name: str, version: str) -> None:
        spec, repository = self.specs[name]
        directory = version_dir(repository, name, version)
        try:
            model = await asyncio.to_thread(self._load, directory, spec)  # the event loop keeps serving
        except Exception:
            log.exception("%s v%s: loading for the rollout failed; its traffic stays with stable", name, version)
            raise
        self.registry.add(model)
        log.info("%s: loaded for the rollout", model.label)

    async def settle(self) -> None:
        """Wait for the loads in progress (tests; the first reconfigure)."""
        while self._loading:
            await asyncio.gather(*list(self._loading.values()), return_exceptions=True)

    def _retire(self, model: ServedModel) -> None:
        """No new requests reach it (it left the registry); closed once the grace period has passed."""
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
