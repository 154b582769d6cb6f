"""Which version of a model answers a request, and which (if any) also runs it after the answer is sent.

Canary by weight, sticky per request key: the key (the request `id`, else `X-Request-ID`) is hashed with
the application's secret (so that no client can pick keys) to a point in [0, 100), and the candidate
answers points below its weight, so retries of one request reach one version. A canaried request also
runs on stable, after the answer, so both outputs can be compared; shadowed requests are answered by
stable and also run on the candidate, whose answer is never returned. Shadow sampling hashes the key with
another salt, so which requests are shadowed does not depend on which are canaried. A request pinned to a
version (`/v2/models/{m}/versions/{v}/...`) always reaches it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["canary", "bluegreen", "shadow"]


@dataclass(frozen=True)
class Route:
    answer: str  # the version whose output is returned
    mirror: str | None = None  # a version that also runs the request after the answer is sent


@dataclass(frozen=True)
class Routing:
    """How one model's traffic is split now. weight: percent of requests the candidate answers;
    shadow_percent: percent of the requests stable answers that also run on the candidate."""

    stable: str
    candidate: str | None = None
    weight: float = 0.0
    shadow_percent: float = 0.0

    def __post_init__(self) -> None:
        for name in ("weight", "shadow_percent"):
            value = getattr(self, name)
            if not 0.0 <= value <= 100.0:
                raise ValueError(f"{name} must be within 0..100, got {value}")
        if self.candidate is None and (self.weight or self.shadow_percent):
            raise ValueError("a weight or shadow share needs a candidate version")

    def route(self, key: str | None = None, pinned: str | None = None, secret: bytes = b"") -> Route:
        """`secret`: the application's (the same on every replica), with which the key is hashed."""
        if pinned is not None:
            return Route(pinned)
        if self.candidate is None:
            return Route(self.stable)
        if self.weight and point(key, "canary", secret) < self.weight:
            return Route(self.candidate, self.stable)
        if self.shadow_percent and point(key, "shadow", secret) < self.shadow_percent:
            return Route(self.stable, self.candidate)
        return Route(self.stable)


def point(key: str | None, salt: str, secret: bytes = b"") -> float:
    """A request key's place in [0, 100): the same key (and secret), the same place; no key, a random one.
    Without the secret (blake2b's key) no one can tell a key's place in advance."""
    if key is None:
        return random.random() * 100.0
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8, key=secret).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100.0
