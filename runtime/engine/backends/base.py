"""The one Engine interface every backend implements.

Like Polygraphy's runners: the public `infer` validates against the signature and the engine's state,
then hands over to `_infer_impl`, which only does the work. Every backend is built the same way,
`Backend(EngineSpec, EngineOptions)` (refused with the reason where `availability` says it cannot run
here), and says for itself which of an artifact's engines it would run
here (`choose`), so the loader treats them all alike, ones registered from outside the package included.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from runtime.engine.errors import BackendUnavailable, TrtserveError
from runtime.engine.manifest import EngineEntry, Manifest, Source
from runtime.engine.memory import host_rss_bytes
from runtime.engine.signature import Signature


@dataclass(frozen=True)
class EngineSpec:
    """One engine of a version directory: what a backend's constructor is given."""

    version_dir: Path
    signature: Signature
    precision: str
    file: str | None = None  # relative to version_dir; None for a backend that rebuilds the model
    source: Source | None = None  # how the model was built (factory, weights), for such a backend
    reason: str = ""  # why this engine was chosen, for the log and /stats
    warning: str | None = None  # chosen although not exactly what it was built for (see Engine.caveat)
    passed_over: tuple[str, ...] = ()  # the backends `auto` tried before this one, each with why not

    @property
    def path(self) -> Path:
        return self.version_dir / self.file if self.file else self.version_dir


@dataclass(frozen=True)
class EngineOptions:
    """Settings a server passes to whichever backend it loads; each backend reads those that apply."""

    device: str = "auto"  # auto | cpu | cuda
    intra_op_threads: int | None = None  # ONNX Runtime: threads per call; default the CPUs this process has
    spin: bool = False  # ONNX Runtime: worker threads spin between calls (lower latency, more CPU)


class Engine(ABC):
    backend: ClassVar[str]

    def __init__(self, spec: EngineSpec, options: EngineOptions | None = None) -> None:
        ok, why = self.availability()
        if not ok:
            raise BackendUnavailable(why)
        self.spec = spec
        self.options = options or EngineOptions()
        self.precision = spec.precision
        self.path = spec.path
        self._closed = False

    @classmethod
    @abstractmethod
    def availability(cls) -> tuple[bool, str]:
        """(True, description) when this backend can run here, else (False, why not)."""

    @classmethod
    def runnable(cls, entry: EngineEntry) -> tuple[bool, str]:
        """Can this machine run the manifest's engine `entry`? (ok, reason fit for a log line)."""
        return cls.availability()

    @classmethod
    def caveat(cls, entry: EngineEntry) -> str | None:
        """For a runnable `entry`: why it may not be the best fit here (e.g. a plan built on another GPU model),
        or None. `choose` prefers entries without one and logs it when it takes one anyway."""
        return None

    @classmethod
    def preferred_precisions(cls) -> tuple[str, ...]:
        """The precisions `choose` prefers here, best first. On a GPU the lower precision is the faster
        one (parity already proved it within tolerance); on a CPU fp16 is only emulated."""
        return ("fp32", "fp16")

    @classmethod
    def choose(cls, version_dir: Path, manifest: Manifest, precision: str | None) -> tuple[EngineSpec | None, str]:
        """The engine of this version this backend would load here, and why; (None, why not) when none.
        By default: the manifest's entries of this backend (of `precision` when given) this machine can
        run, those without a caveat first, then the most preferred precision."""
        entries = [e for e in manifest.engines if e.backend == cls.backend and precision in (None, e.precision)]
        if not entries:
            of = f" of precision {precision}" if precision else ""
            return None, f"the artifact has no {cls.backend} engine{of}"
        checked = [(entry, *cls.runnable(entry)) for entry in entries]
        usable = [(entry, why) for entry, ok, why in checked if ok]
        if not usable:
            return None, "; ".join(sorted({why for _, ok, why in checked}))
        order = cls.preferred_precisions()
        caveats = {entry.file: cls.caveat(entry) for entry, _ in usable}

        def rank(u: tuple[EngineEntry, str]) -> tuple[bool, int]:
            entry = u[0]
            precision = order.index(entry.precision) if entry.precision in order else len(order)
            return caveats[entry.file] is not None, precision

        entry, why = min(usable, key=rank)
        spec = EngineSpec(
            version_dir, manifest.signature, entry.precision, entry.file, manifest.source, why, caveats[entry.file]
        )
        return spec, why

    @property
    def signature(self) -> Signature:
        return self.spec.signature

    @property
    def device(self) -> str:
        """Where inference runs, e.g. 'cpu' or 'cuda:0'."""
        return "cpu"

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._closed:
            raise TrtserveError(f"{self.backend} engine for {self.path} is closed")
        self.signature.validate(feed)
        outputs = self._infer_impl(feed)
        expected = [o.name for o in self.signature.outputs]
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
