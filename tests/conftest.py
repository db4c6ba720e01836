"""Shared tiny-model fixtures, one intra-op thread per test, and the `gpu` marker's skip."""

from __future__ import annotations

from collections.abc import Iterator

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


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The test models are tiny: extra threads only spin, and on a shared 2-core machine two
    contending threads made files 3-100x slower. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
