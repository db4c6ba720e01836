"""A reshape that merges heads back into one width written from an int attribute
(``reshape(B, N, self.attn_dim)`` with ``attn_dim = num_heads * head_dim``, as timm's
``Attention`` does): the attribute is rewritten with the heads, else it goes stale."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunekit.structured import prune


class MergedAttention(nn.Module):
    def __init__(self, dim: int = 12, num_heads: int = 4, head_dim: int = 5) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attn_dim = num_heads * head_dim
        self.q = nn.Linear(dim, self.attn_dim)
        self.k = nn.Linear(dim, self.attn_dim)
        self.v = nn.Linear(dim, self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.attn_dim))


def test_merged_width_attribute_shrinks_with_the_heads() -> None:
    torch.manual_seed(0)
    model, x = MergedAttention().eval(), torch.randn(2, 7, 12)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.num_heads == 2 and pruned.head_dim == 5
    assert pruned.attn_dim == 10 == pruned.proj.in_features == pruned.q.out_features
    assert result.plan["attrs"][""]["attn_dim"] == 10
    assert pruned(x).shape == (2, 7, 12)
    assert model.attn_dim == 20  # the user's model is left as it was
