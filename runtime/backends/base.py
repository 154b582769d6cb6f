"""The one Engine interface every backend implements.

Like Polygraphy's runners: the public `infer` validates against the signature and the engine's state,
then hands over to `_infer_impl`, which only does the work.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np

from runtime.errors import TrtserveError
from runtime.memory import host_rss_bytes
from runtime.signature import Signature


class Engine(ABC):
    backend: ClassVar[str]

    def __init__(self, signature: Signature, precision: str, path: Path) -> None:
        self._signature = signature
        self.precision = precision
        self.path = Path(path)
        self._closed = False

    @classmethod
    @abstractmethod
    def availability(cls) -> tuple[bool, str]:
        """(True, description) when this backend can run here, else (False, why not)."""

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def device(self) -> str:
        """Where inference runs, e.g. 'cpu' or 'cuda:0'."""
        return "cpu"

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise TrtserveError(f"{self.backend} engine for {self.path} is closed")
        self._signature.validate(feed)
        outputs = self._infer_impl(feed)
        expected = [o.name for o in self._signature.outputs]
        if sorted(outputs) != sorted(expected):
            raise TrtserveError(
                f"{self.backend} engine returned outputs {sorted(outputs)}, the signature declares {expected}"
            )
        return {name: outputs[name] for name in expected}

    @abstractmethod
    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def memory(self) -> dict[str, int | None]:
        """Memory this process holds: host RSS, and device bytes where the backend can tell."""
        return {"host_rss_bytes": host_rss_bytes(), "device_bytes": None}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close_impl()

    def _close_impl(self) -> None:  # noqa: B027 - backends without resources keep the default
        pass

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.precision} {self.path} on {self.device}>"
