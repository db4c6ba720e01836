"""gather / take_along_dim / scatter / scatter_add by index tensors: channels along other
dims keep their positions and prune (pruned = zeroed); along the indexed dim they are kept
whole. (Phi-MoE's and JetMoE's routers, which use them: tests/structured/test_transformers.py.)"""

from __future__ import annotations

import pytest
import torch
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


class TokenPick(nn.Module):
    """Keeps the k highest-scoring tokens of each sequence (gather along tokens), and
    writes them back into a zero buffer (scatter along tokens)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.lin1, self.score = nn.Linear(6, 8), nn.Linear(6, 1)
        self.lin2 = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.lin1(x)
        idx = self.score(x).squeeze(-1).topk(3, dim=1).indices.unsqueeze(-1)
        idx = idx.expand(-1, -1, y.shape[-1])
        if self.how == "gather":
            picked = y.gather(1, idx)
        elif self.how == "take_along_dim":
            picked = torch.take_along_dim(y, idx, dim=1)
        elif self.how == "scatter":
            picked = torch.zeros_like(y).scatter(1, idx, y.gather(1, idx))
        else:
            picked = y.clone().scatter_add_(1, idx, y.gather(1, idx))
        return self.lin2(torch.relu(picked))


@pytest.mark.parametrize("how", ["gather", "take_along_dim", "scatter", "scatter_add"])
def test_index_along_tokens_keeps_channels_prunable(how: str) -> None:
    torch.manual_seed(0)
    model, x = TokenPick(how).eval(), torch.randn(2, 5, 6)
    result = prune(model, x, ratio=0.5, importance="random", seed=0)
    assert result.model.lin1.out_features == 4 and result.model.lin2.in_features == 4
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x))


class ChannelPick(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(6, 8), nn.Linear(2, 3)
        self.register_buffer("idx", torch.tensor([[1, 5]]))  # channels 1 and 5, by number

    def forward(self, x: Tensor) -> Tensor:
        y = self.lin1(x)
        return self.lin2(y.gather(-1, self.idx.expand(y.shape[0], -1)))


def test_gather_along_channels_keeps_them_whole() -> None:
    torch.manual_seed(0)
    model, x = ChannelPick().eval(), torch.randn(4, 6)
    with pytest.warns(UserWarning, match="removed nothing"):
        result = prune(model, x, ratio=0.5)
    assert result.model.lin1.out_features == 8
    assert "by index values" in result.coverage.fixed["lin1.weight"]


class NeighbourMax(nn.Module):
    """DGCNN-style neighbour pooling: every channel gathered along the points by a kNN
    index expanded over the channels, to a width read from the shape or written as an
    int attribute."""

    def __init__(self, width: str, channels: int = 16, k: int = 4) -> None:
        super().__init__()
        self.width, self.channels, self.k = width, channels, k
        self.stem, self.head = nn.Conv1d(3, channels, 1), nn.Conv1d(channels, 5, 1)

    def forward(self, xyz: Tensor) -> Tensor:
        batch, _, points = xyz.shape
        near = torch.cdist(xyz.mT, xyz.mT).topk(self.k, -1, largest=False).indices
        x = torch.relu(self.stem(xyz))
        width = x.shape[1] if self.width == "read" else self.channels
        index = near.reshape(batch, 1, points * self.k).expand(-1, width, -1)
        gathered = torch.gather(x, 2, index).view(batch, -1, points, self.k)
        return self.head(gathered.amax(-1))


def test_an_index_as_wide_as_the_channels_read_from_the_shape_follows_them() -> None:
    torch.manual_seed(0)
    model, xyz = NeighbourMax("read").eval(), torch.randn(2, 3, 20)
    result = prune(model, xyz, ratio=0.5)
    assert result.model.stem.out_channels == result.model.head.in_channels == 8
    reference = _zero_removed_inputs(model, result.plan)
    for points in (20, 31):
        xyz = torch.randn(3, 3, points)
        torch.testing.assert_close(result.model(xyz), reference(xyz))


def test_an_index_width_written_as_an_int_keeps_the_channels_whole() -> None:
    # before, the channels were cut and the 16-wide index failed the pruned model's check
    model, xyz = NeighbourMax("attribute").eval(), torch.randn(2, 3, 20)
    result = prune(model, xyz, ratio=0.5)
    assert result.model.stem.out_channels == 16
    assert "index spans 16 positions" in result.coverage.fixed["stem.weight"]
    torch.testing.assert_close(result.model(xyz), model(xyz))
