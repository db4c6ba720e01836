"""``roll``, ``tril`` and ``triu`` along a dim that carries channels: the pruned tensor's
positions count the kept channels only, so the shift or the diagonal would hand the next
layer other channels than it was trained on. Those channels are kept whole; along dims
without channels (Swin's shifted windows) the op is replayed and everything prunes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


class Positional(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.b = nn.Conv2d(12, 12, 3, padding=1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.a(x))
        if self.op == "roll channels":
            y = torch.roll(y, 2, 1)
        elif self.op == "roll flat":
            y = y.roll(5)
        elif self.op == "tril channels":  # channels on the last dim
            y = y.permute(0, 2, 3, 1).tril().permute(0, 3, 1, 2)
        elif self.op == "roll spatial":
            y = torch.roll(y, (1, -1), (2, 3))
        elif self.op == "triu spatial":
            y = y.triu(1)
        return self.head(F.relu(self.b(y)))


@pytest.mark.parametrize("op", ["roll channels", "roll flat", "tril channels"])
def test_channels_moved_by_position_are_kept_whole(op: str) -> None:
    model, x = Positional(op).eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5)
    assert result.model.a.out_channels == result.model.b.in_channels == 12
    assert result.model.b.out_channels == 6  # the rest prunes
    assert any("by position" in why for why in result.coverage.fixed.values())


@pytest.mark.parametrize("op", ["roll spatial", "triu spatial"])
def test_spatial_shifts_prune_and_match_zeroed_inputs(op: str) -> None:
    model, x = Positional(op).eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5, importance="random", seed=1)
    assert result.model.a.out_channels == 6
    with torch.no_grad():
        expected = _zero_removed_inputs(model, result.plan)(x)
        torch.testing.assert_close(result.model(x), expected, rtol=1e-4, atol=1e-5)
