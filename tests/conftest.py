"""Shared tiny-model fixtures and the `gpu` marker's skip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.zoo import LeNet5


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def lenet() -> LeNet5:
    torch.manual_seed(0)
    return LeNet5().eval()


@pytest.fixture
def lenet_input() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 1, 32, 32)


@pytest.fixture
def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
