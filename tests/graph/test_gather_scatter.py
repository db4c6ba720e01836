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
