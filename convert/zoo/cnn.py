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
