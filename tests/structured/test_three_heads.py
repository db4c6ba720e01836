"""A head count equal to the literal 3 of a fused q/k/v view (ViT-Tiny and DeiT-Tiny: 3
heads of 64; timm writes ``reshape(B, N, 3, self.num_heads, -1)``). Matched by value, the
literal was taken for the head count: q, k and v were cut as if they were heads, and the
whole attention was kept. The call's source says which argument reads the attribute."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune

Layout = Literal["timm", "tuple", "function", "bloom"]
DIM, HEADS = 24, 3
HEAD_DIM = DIM // HEADS


class Attention(nn.Module):
    def __init__(self, layout: Layout) -> None:
        super().__init__()
        self.layout, self.num_heads, self.head_dim = layout, HEADS, HEAD_DIM
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        if self.layout == "timm":
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        elif self.layout == "tuple":
            qkv = self.qkv(x).view((b, n, 3, self.num_heads, self.head_dim))
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        elif self.layout == "function":
            qkv = torch.reshape(self.qkv(x), (b, n, 3, self.num_heads, self.head_dim))
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        else:  # rows laid out as (heads, 3, head_dim)
            qkv = self.qkv(x).view(b, n, self.num_heads, 3, self.head_dim).transpose(1, 2)
            q, k, v = qkv.unbind(3)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Net(nn.Module):
    def __init__(self, layout: Layout) -> None:
        super().__init__()
        self.embed = nn.Linear(5, DIM)
        self.attn = Attention(layout)
        self.head = nn.Linear(DIM, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        return self.head(x + self.attn(x))


@pytest.mark.parametrize("layout", ["timm", "tuple", "function", "bloom"])
def test_heads_leave_when_their_count_equals_the_literal_3(layout: Layout) -> None:
    torch.manual_seed(0)
    model, x = Net(layout).eval(), torch.randn(2, 6, 5)
    result = prune(model, x, ratios={"attn.qkv": 0.4}, importance="random", seed=2)
    attn = result.model.attn
    assert attn.num_heads == 2 and attn.head_dim == HEAD_DIM
    assert attn.qkv.out_features == 3 * 2 * HEAD_DIM
    assert attn.proj.in_features == 2 * HEAD_DIM
    cols = result.plan["modules"]["attn.proj"]["keep"]["in"]
    heads = sorted({c // HEAD_DIM for c in cols})
    assert cols == [h * HEAD_DIM + j for h in heads for j in range(HEAD_DIM)]
    rows = result.plan["modules"]["attn.qkv"]["keep"]["out"]
    if layout == "bloom":
        assert rows == [3 * h * HEAD_DIM + j for h in heads for j in range(3 * HEAD_DIM)]
    else:  # the same heads' rows in each of q, k and v
        assert rows == [p * DIM + c for p in range(3) for c in cols]
    zeroed = _zero_removed_inputs(model, result.plan)  # proj ignores the removed head
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)
