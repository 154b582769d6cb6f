"""PyTorch eager: the baseline the compiled engines are measured against (CPU, or CUDA when present).

It rebuilds the model from the factory the manifest records and refuses to run if the weights differ
from the ones the artifact was built from. Needs the `convert` extra (torch and the model's code).
Never chosen by backend="auto".
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from runtime.engine.backends.base import Engine, EngineOptions, EngineSpec
from runtime.engine.errors import ArtifactError, BackendUnavailable
from runtime.engine.manifest import Manifest
from runtime.engine.torch_model import to_numpy, to_torch, weights_sha256


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, spec: EngineSpec, options: EngineOptions | None = None) -> None:
        super().__init__(spec, options)
        if spec.source is None:
            raise BackendUnavailable(
                f"{spec.version_dir}: the torch backend needs the manifest's source to rebuild the model"
            )
        import torch

        factory = spec.source.factory
        module_name, _, attr = factory.partition(":")
        try:
            model = getattr(importlib.import_module(module_name), attr)()
        except Exception as e:
            raise BackendUnavailable(f"cannot rebuild {factory}: {type(e).__name__}: {e}") from e
        if weights_sha256(model) != spec.source.weights_sha256:
            raise ArtifactError(f"{spec.version_dir}: {factory} now builds other weights than the artifact's")
        wanted = self.options.device
        self._device = "cuda" if wanted in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        self._model = model.eval().to(self._device)
        self._torch = torch

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            import torch
        except ImportError:
            return False, "torch is not installed (pip install 'trtserve[convert]')"
        return True, f"torch {torch.__version__} ({'cuda' if torch.cuda.is_available() else 'cpu'})"

    @classmethod
    def choose(cls, version_dir: Path, manifest: Manifest, precision: str | None) -> tuple[EngineSpec | None, str]:
        """The model itself, rebuilt from its recorded factory, at fp32: no engine file of the artifact."""
        if precision not in (None, "fp32"):
            return None, f"the torch backend runs fp32 only, not {precision}"
        ok, why = cls.availability()
        if not ok:
            return None, why
        return EngineSpec(version_dir, manifest.signature, "fp32", None, manifest.source), f"requested; {why}"

    @property
    def device(self) -> str:
        return "cuda:0" if self._device == "cuda" else "cpu"

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [s.name for s in self.signature.inputs]
        with self._torch.inference_mode():
            result = self._model(*to_torch(feed, names, self._device))
        return to_numpy(result, [s.name for s in self.signature.outputs])

    def memory(self) -> dict[str, int | None]:
        report = super().memory()
        if self._device == "cuda":
            report["device_bytes"] = int(self._torch.cuda.memory_reserved())  # what the allocator holds
        return report
