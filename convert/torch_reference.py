"""The parity reference: the original PyTorch model, fp32, on the CPU."""

from __future__ import annotations

import numpy as np

from convert.failures import ExportError
from convert.model_config import ModelConfig
from runtime.engine.torch_model import to_numpy, to_torch


class TorchReference:
    def __init__(self, model, config: ModelConfig) -> None:
        self.model = model
        self.config = config

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            result = self.model(*to_torch(feed, [i.name for i in self.config.inputs]))
        try:
            return to_numpy(result, [o.name for o in self.config.outputs])
        except ValueError as e:
            raise ExportError(f"{self.config.path}: {e}") from None
