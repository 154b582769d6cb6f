"""A small CIFAR-sized image classifier with seeded random weights: synthetic, for throughput work.

Its logits mean nothing; what matters is a realistic conv/BN/ReLU/pool/linear graph and a fixed seed,
so every build of it exports the same weights.
"""

from __future__ import annotations

SEED = 20261127


def build():
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = nn.Sequential(
            *block(3, 32),
            nn.MaxPool2d(2),  # 16x16
            *block(32, 64),
            nn.MaxPool2d(2),  # 8x8
            *block(64, 128),
            nn.AdaptiveAvgPool2d(1),  # 1x1
            nn.Flatten(),
            nn.Linear(128, 10),
        )
        # Non-trivial BatchNorm statistics, so folding them into the convs is actually exercised.
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def eval_set(rows: int = 512) -> dict:
    """A golden set for this synthetic model: seeded standard-normal images (its parity inputs' distribution)
    labelled with the classes the seeded reference model predicts. A version scoring below 1.0 on it
    predicts differently from the reference: retrained or broken weights, or an engine that drifted."""
    import numpy as np
    import torch

    images = np.random.default_rng(SEED).standard_normal((rows, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        labels = build()(torch.from_numpy(images)).argmax(dim=1).numpy()
    return {"inputs": {"image": images}, "labels": labels.astype(np.int64)}


def reference(rows: int = 1000) -> dict:
    """Drift monitoring's yardstick: standard-normal images, the distribution of its parity inputs (a
    seed of its own, so the reference is not the eval set)."""
    import numpy as np

    return {"image": np.random.default_rng(SEED + 1).standard_normal((rows, 3, 32, 32), dtype=np.float32)}
