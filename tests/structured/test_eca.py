"""ECA attention (Wang et al. 2020): a one-channel ``conv1d`` slides along the pooled channel
vector ``[B, 1, C]``. Its kernel belongs to no channel, so the block's channels prune, and
each kept channel's gate is the conv over the kept channels' pooled values."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.structured import prune


class EcaNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def gate(self, y: Tensor) -> Tensor:
        pooled = y.mean((2, 3)).view(y.shape[0], 1, -1)  # as timm's EcaModule writes it
        return torch.sigmoid(self.eca(pooled)).view(y.shape[0], -1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.stem(x))
        return self.head(F.relu(self.body(y * self.gate(y).expand_as(y))))


def test_channels_around_an_eca_gate_prune() -> None:
    torch.manual_seed(0)
    model, x = EcaNet().eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.stem.out_channels == pruned.body.in_channels == 8
    assert pruned.eca.weight.shape == (1, 1, 3)
    assert torch.equal(pruned.eca.weight, model.eca.weight)
    assert pruned(x).shape == model(x).shape
    with torch.no_grad():  # the gate of the kept channels is the conv over their pool
        keep = torch.tensor(result.plan["modules"]["stem"]["keep"]["out"])
        y = F.relu(model.stem(x))[:, keep]
        torch.testing.assert_close(pruned.gate(F.relu(pruned.stem(x))), model.gate(y))


def test_ratio_zero_keeps_the_outputs() -> None:
    torch.manual_seed(0)
    model, x = EcaNet().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(prune(model, x, ratio=0.0).model(x), model(x))


def test_a_conv_that_changes_the_channel_axis_length_keeps_it_whole() -> None:
    """With stride 2 the output positions no longer sit on the input's channels."""
    torch.manual_seed(0)
    model, x = EcaNet().eval(), torch.randn(2, 3, 8, 8)
    model.eca = nn.Conv1d(1, 1, 3, padding=1, stride=2, bias=False)
    model.body = nn.Conv2d(16, 16, 3, padding=1)
    model.gate = lambda y: torch.sigmoid(  # type: ignore[method-assign]
        model.eca(y.mean((2, 3)).view(y.shape[0], 1, -1))).repeat_interleave(2, -1).view(
            y.shape[0], -1, 1, 1)
    result = prune(model, x, ratio=0.5)
    assert result.model.stem.out_channels == 16
