"""Models that exist only for benchmarks."""

from __future__ import annotations


def image224():
    """FP32 [batch, 3, 224, 224] -> [batch, 10], nearly free to compute: what is measured is moving
    150,528 floats a request through the protocol."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.AvgPool2d(16), nn.Flatten(), nn.Linear(3 * 14 * 14, 10)).eval()
