"""as_strided views (Longformer's overlapping chunks): replayed on a label storage laid out
as the data, they follow pruning where the channel dim comes out whole, sized by a shape
read; sizes written in the code keep the channels whole."""

from __future__ import annotations

import pytest
import torch
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


class Chunks(nn.Module):
    """Overlapping windows of 4 tokens every 2 tokens, built as Longformer's ``_chunk``:
    sizes and strides read from the tensor (``literal=True``: the channel count written)."""

    def __init__(self, literal: bool = False) -> None:
        super().__init__()
        self.literal = literal
        self.lin, self.head = nn.Linear(5, 8), nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.lin(x).transpose(0, 1).contiguous().transpose(0, 1)  # not contiguous
        y = y.view(y.size(0), y.size(1) // 4, 4, y.size(2))
        size, stride = list(y.size()), list(y.stride())
        size[1], stride[1] = size[1] * 2 - 1, stride[1] // 2
        if self.literal:
            size[3] = 8
        windows = y.as_strided(size=size, stride=stride)
        return self.head(torch.relu(windows)).sum(2)


def test_overlapping_windows_keep_channels_prunable() -> None:
    torch.manual_seed(0)
    model, x = Chunks().eval(), torch.randn(2, 8, 5)
    result = prune(model, x, ratio=0.5, importance="random", seed=1)
    assert result.model.lin.out_features == 4 and result.model.head.in_features == 4
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        assert result.model(x).shape == (2, 3, 2)
        torch.testing.assert_close(result.model(x), zeroed(x))


def test_a_channel_count_written_in_the_code_keeps_them_whole() -> None:
    torch.manual_seed(0)
    model, x = Chunks(literal=True).eval(), torch.randn(2, 8, 5)
    with pytest.warns(UserWarning, match="removed nothing"):
        result = prune(model, x, ratio=0.5)
    assert result.model.lin.out_features == 8
    assert "sizes or strides written in the code" in result.coverage.fixed["lin.weight"]
