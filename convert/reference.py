"""The parity reference: the original PyTorch model, fp32, on the CPU."""

from __future__ import annotations

import hashlib

import numpy as np

from convert.config import ModelConfig
from convert.errors import ExportError
from convert.export import to_torch_args


class TorchReference:
    def __init__(self, model, config: ModelConfig) -> None:
        self.model = model
        self.config = config

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            result = self.model(*to_torch_args(self.config, feed))
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, dict):
            result = tuple(result.values())
        names = [o.name for o in self.config.outputs]
        if len(result) != len(names):
            raise ExportError(
                f"{self.config.path}: the model returned {len(result)} outputs, the config declares {names}"
            )
        return {
            name: t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()
            for name, t in zip(names, result, strict=True)
        }


def weights_sha256(model) -> str:
    """sha256 over the state dict (names, dtypes, shapes and bytes, in name order)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
