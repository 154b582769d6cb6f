"""The model versions a replica serves, and each model's capture sink: one owner that the rest reads.

The handler looks versions up here on every request (dict lookups); the autoscaling stats and the
telemetry read `served()` when they report; the rollout's VersionManager adds and retires versions; the
drift observer follows additions and retirements through `subscribe`. A retired version leaves every one
of them at once; its owner closes it once the requests it holds have finished.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.serve.capture_sink import CaptureSink
    from runtime.serve.model import ServedModel

Follower = Callable[["ServedModel"], object]


class ModelRegistry(Mapping[str, Mapping[str, "ServedModel"]]):
    """model name -> {version: ServedModel}, read-only; `add` and `retire` change it."""

    def __init__(self, models: Iterable[ServedModel] = (), captures: Mapping[str, CaptureSink] | None = None) -> None:
        self._versions: dict[str, dict[str, ServedModel]] = {}
        # Read-only views of _versions' dicts, made once per model: a lookup is a dict lookup, and the
        # views follow later additions and retirements.
        self._views: dict[str, Mapping[str, ServedModel]] = {}
        self._added: list[Follower] = []
        self._retired: list[Follower] = []
        self.captures: Mapping[str, CaptureSink] = MappingProxyType(dict(captures or {}))  # model -> its sink
        for model in models:
            self.add(model)

    def subscribe(self, added: Follower | None = None, retired: Follower | None = None) -> None:
        """Call `added` with each version added from now on (before it takes requests), `retired` with each
        version retired (once it takes no new requests)."""
        if added is not None:
            self._added.append(added)
        if retired is not None:
            self._retired.append(retired)

    def add(self, model: ServedModel) -> None:
        """Serve one more version (loaded and warm) beside those already here."""
        if model.version in self._versions.get(model.name, {}):
            raise ValueError(f"{model.label} is already served by this replica")
        for follow in self._added:
            follow(model)
        versions = self._versions.setdefault(model.name, {})
        self._views.setdefault(model.name, MappingProxyType(versions))
        versions[model.version] = model

    def retire(self, name: str, version: str) -> ServedModel:
        """Take a version out: no new request reaches it. The caller closes it once its requests are done."""
        versions = self._versions.get(name, {})
        if version not in versions:
            raise KeyError(f"{name} v{version} is not served by this replica")
        model = versions.pop(version)
        if not versions:
            del self._versions[name], self._views[name]
        for follow in self._retired:
            follow(model)
        return model

    def served(self) -> list[ServedModel]:
        """Every version served now."""
        return [model for versions in self._versions.values() for model in versions.values()]

    def __getitem__(self, name: str) -> Mapping[str, ServedModel]:
        return self._views[name]

    def get(  # Mapping's own goes through a KeyError for a miss
        self, name: str, default: Mapping[str, ServedModel] | None = None
    ) -> Mapping[str, ServedModel] | None:
        return self._views.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, name: object) -> bool:
        return name in self._views
