"""Grouped-query attention written as the GQA paper writes it: the query heads viewed as
``(num_kv_heads, g, head_dim)`` with ``g = self.num_heads // self.num_kv_heads`` computed in
``forward``, and no repeat of keys and values. Whole key/value heads go with their ``g``
query heads; ``num_kv_heads`` is rewritten, and so must ``num_heads`` be (the total of query
heads, ``num_kv_heads · g``), or ``g`` changes and the view fails or splits wrongly."""

from __future__ import annotations

import pytest
import torch
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


class GroupedQuery(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 8, kv_heads: int = 2,
                 minus_one: bool = False) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.minus_one = minus_one
        self.q_proj = nn.Linear(dim, heads * self.head_dim)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim)
        self.o_proj = nn.Linear(heads * self.head_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        g = self.num_heads // self.num_kv_heads
        if self.minus_one:
            q = self.q_proj(x).view(b, t, -1, g, self.head_dim)
        else:
            q = self.q_proj(x).view(b, t, self.num_kv_heads, g, self.head_dim)
        q = q.permute(0, 2, 3, 1, 4)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        scores = torch.einsum("bhgnd,bhsd->bhgns", q, k) * self.head_dim ** -0.5
        out = torch.einsum("bhgns,bhsd->bhgnd", scores.softmax(-1), v)
        return self.o_proj(out.permute(0, 3, 1, 2, 4).reshape(b, t, -1))


@pytest.mark.parametrize("minus_one", [False, True])
def test_whole_groups_go_and_the_total_of_query_heads_follows(minus_one: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(GroupedQuery(minus_one=minus_one), nn.Linear(32, 5)).eval()
    x = torch.randn(2, 6, 32)
    result = prune(model, x, ratio=0.5, importance="l2")
    attn = result.model[0]
    assert (attn.num_kv_heads, attn.num_heads, attn.head_dim) == (1, 4, 4)
    assert attn.q_proj.out_features == 16 and attn.k_proj.out_features == 4
    kept = result.plan["modules"]["0.o_proj"]["keep"]["in"]
    group = kept[0] // 16
    assert kept == list(range(16 * group, 16 * group + 16))  # one whole group of 4 heads
    zeroed = _zero_removed_inputs(model, result.plan)
    for inputs in (x, torch.randn(3, 4, 32)):
        assert torch.allclose(result.model(inputs), zeroed(inputs), atol=1e-5)
