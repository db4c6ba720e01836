"""Layers only training runs (GoogLeNet's and Inception's auxiliary heads): when the eval-mode
trace leaves a layer unvisited, a second pass in training mode (every buffer restored)
couples it too, and the forward check runs in both modes, so the pruned model still trains."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import prunekit as pk


class _AuxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.b, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.aux = nn.Conv2d(8, 2, 1)  # reads a's channels, in training mode only

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        h = torch.relu(self.bn(self.a(x)))
        y = self.head(torch.relu(self.b(h))).mean((2, 3))
        if self.training:
            return y, self.aux(h).mean((2, 3))
        return y


def test_training_only_head_is_pruned_with_what_feeds_it() -> None:
    model, x = _AuxNet().eval(), torch.randn(2, 3, 10, 10)
    stats = (model.bn.running_mean.clone(), model.bn.running_var.clone())
    result = pk.prune(model, x, ratio=0.5)
    assert torch.equal(model.bn.running_mean, stats[0])  # the training pass left no trace
    assert torch.equal(model.bn.running_var, stats[1]) and not model.training
    pruned = result.model
    assert pruned.a.out_channels == pruned.aux.in_channels == 4
    pruned.train()
    with torch.no_grad():
        main, aux = pruned(x)
    assert main.shape == (2, 4) and aux.shape == (2, 2)  # outputs keep their width


def test_model_whose_training_pass_fails_still_prunes() -> None:
    model = _AuxNet().eval()
    x = torch.randn(1, 3, 3, 3)  # one value per channel after a: BatchNorm cannot train
    assert pk.prune(model, x, ratio=0.5).model.a.out_channels == 4
