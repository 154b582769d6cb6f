"""PyTorch models as trtserve sees them: the weights hash an artifact records, and inputs and outputs as
numpy arrays. One definition for the convert stage (export, parity reference) and the torch backend.

torch is imported when these are called, never when this module is imported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def weights_sha256(model: Any) -> str:
    """sha256 over the state dict (names, dtypes, shapes and bytes, in name order)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def to_torch(feed: Mapping[str, np.ndarray], names: Sequence[str], device: str = "cpu") -> tuple:
    """forward()'s positional arguments: the arrays named `names`, in that order, on `device`."""
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(feed[name])).to(device) for name in names)


def to_numpy(result: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """forward()'s result (a tensor, a tuple or a dict of them) as numpy arrays named `names`, in order,
    in their own dtypes (bfloat16, which numpy lacks, as float32). ValueError when the count differs."""
    import torch

    if isinstance(result, torch.Tensor):
        result = (result,)
    elif isinstance(result, dict):
        result = tuple(result.values())
    if len(result) != len(names):
        raise ValueError(f"the model returned {len(result)} outputs, {len(names)} are declared ({', '.join(names)})")
    arrays = {}
    for name, tensor in zip(names, result, strict=True):
        tensor = tensor.detach().cpu()
        arrays[name] = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    return arrays
