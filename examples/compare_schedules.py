"""Gradual pruning inside your own training loop (two added lines), then the full comparison.

    python examples/compare_schedules.py            # ~2 minutes on 2 cores
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from prunekit.cli.compare_schedules import CompareConfig, run_compare
from prunekit.data.vision import load_dataset
from prunekit.schedules import cubic
from prunekit.sparse.masks import masked_tensors
from prunekit.train.callbacks import Pruner
from prunekit.train.finetune import evaluate
from prunekit.zoo import LeNet5


def own_loop() -> None:
    torch.manual_seed(0)
    data = load_dataset("mnist", limit=10_000)
    loader = DataLoader(data.train, batch_size=64, shuffle=True)
    model = LeNet5()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    epochs = 6
    pruner = Pruner(cubic(0.0, 0.9, begin_step=len(loader), end_step=4 * len(loader),
                          frequency=20))
    pruner.on_train_begin(model, optimizer)                 # added line 1
    step = 0
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            step += 1
            pruner.on_step(step)                            # added line 2
    masks = masked_tensors(model).values()
    sparsity = 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    accuracy = evaluate(model, DataLoader(data.test, batch_size=256)).accuracy
    print(f"own loop: sparsity {sparsity:.1%}, accuracy {accuracy:.2%}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    own_loop()
    run_compare(CompareConfig(out="prunekit-out/compare-schedules"))
