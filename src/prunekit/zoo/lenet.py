"""LeNet-5 as seed 000 draws it: conv 6@5×5 → pool → conv 16@5×5 → pool → FC 120 → FC 84 → 10."""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """LeNet-5 for 32×32 single-channel images (28×28 MNIST is zero-padded to 32×32).

    Parameters: 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706 for 10 classes.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)


def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    """Factory usable from the CLI as ``prunekit.zoo.lenet:lenet5``."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels)
