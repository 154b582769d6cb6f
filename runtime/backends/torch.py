"""PyTorch eager: the baseline the compiled engines are measured against (CPU, or CUDA when present).

It rebuilds the model from the factory the manifest records and refuses to run if the weights differ
from the ones the artifact was built from. Needs the `convert` extra (torch and the model's code).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from runtime.backends.base import Engine
from runtime.errors import ArtifactError, BackendUnavailable
from runtime.signature import Signature


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, version_dir: Path, signature: Signature, precision: str = "fp32", device: str = "auto") -> None:
        super().__init__(signature, precision, version_dir)
        ok, why = self.availability()
        if not ok:
            raise BackendUnavailable(why)
        import torch

        from convert.reference import weights_sha256

        manifest = json.loads((Path(version_dir) / "manifest.json").read_text())
        module_name, _, attr = manifest["source"]["factory"].partition(":")
        try:
            model = getattr(importlib.import_module(module_name), attr)()
        except Exception as e:
            raise BackendUnavailable(f"cannot rebuild {manifest['source']['factory']}: {type(e).__name__}: {e}") from e
        if weights_sha256(model) != manifest["source"]["weights_sha256"]:
            raise ArtifactError(
                f"{version_dir}: {manifest['source']['factory']} now builds other weights than the artifact's"
            )
        self._device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        self._model = model.eval().to(self._device)
        self._torch = torch

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            import torch
        except ImportError:
            return False, "torch is not installed (pip install 'trtserve[convert]')"
        return True, f"torch {torch.__version__} ({'cuda' if torch.cuda.is_available() else 'cpu'})"

    @property
    def device(self) -> str:
        return "cuda:0" if self._device == "cuda" else "cpu"

    def _infer_impl(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(feed[s.name])).to(self._device) for s in self.signature.inputs]
        with torch.inference_mode():
            result = self._model(*args)
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, dict):
            result = tuple(result.values())
        return {s.name: t.float().cpu().numpy() for s, t in zip(self.signature.outputs, result, strict=True)}

    def memory(self) -> dict[str, int | None]:
        report = super().memory()
        if self._device == "cuda":
            report["device_bytes"] = int(self._torch.cuda.memory_reserved())  # what the allocator holds
        return report
