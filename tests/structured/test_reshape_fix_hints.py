"""Every reason a reshape keeps channels whole names the fix."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunekit.structured.pruning import prune


class _TwoHolders(nn.Module):
    """Splits its 8 channels as (2, 4), with 4 held by two int attributes and read a
    statement before the call (so the call's own expression does not tell which)."""

    def __init__(self) -> None:
        super().__init__()
        self.width, self.size = 4, 4
        self.proj_in, self.proj_out = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj_in(x)
        b, t, _ = h.shape
        width = self.width
        h = h.view(b, t, 2, width).relu()
        return self.proj_out(h.reshape(b, t, 8))


def test_a_size_held_by_several_attributes_names_the_fix() -> None:
    model = _TwoHolders().eval()
    result = prune(model, torch.randn(2, 5, 6), ratio=0.5)
    reason = {e.name: e.reason for e in result.coverage.entries}["proj_in.weight"]
    assert "by 4, which several attributes of the model hold (width, size)" in reason
    assert "write -1 for that factor, or keep its size in one int attribute" in reason
    assert result.model.proj_in.out_features == 8  # kept whole
