"""Multi-query attention written with broadcasting: one key/value head of size 1 along the
heads dim meets every query head in ``q @ k.transpose(-2, -1)`` and ``probs @ v``. Query
heads prune (pruned = zeroed); the shared key/value head keeps its width. The fused
projection is split by ``(self.embed_dim, self.kv_dim, self.kv_dim)``, as GPT-BigCode
splits it."""

from __future__ import annotations

import torch
from tests.structured.residual import Residual
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


class MultiQuery(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.embed_dim, self.kv_dim = dim, dim // heads
        self.c_attn = nn.Linear(dim, self.embed_dim + 2 * self.kv_dim)
        self.c_proj = nn.Linear(self.embed_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.c_attn(x).unsqueeze(1).split((self.embed_dim, self.kv_dim, self.kv_dim),
                                                     dim=3)
        q = q.view(b, n, -1, self.head_dim).transpose(1, 2)  # [b, heads, n, d]
        probs = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(-1)
        return self.c_proj((probs @ v).transpose(1, 2).reshape(b, n, -1))


def Net() -> Residual:
    return Residual("attn", MultiQuery(), 6, 16, 3)


def test_query_heads_prune_and_the_shared_key_value_head_stays() -> None:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 5, 6)
    result = prune(model, x, ratios={"attn.c_attn": 0.5}, importance="random", seed=0)
    attn = result.model.attn
    assert attn.embed_dim == 8 and attn.kv_dim == 4 and attn.head_dim == 4
    assert attn.c_attn.out_features == 8 + 2 * 4 and attn.c_proj.in_features == 8
    keep = result.plan["modules"]["attn.c_proj"]["keep"]["in"]
    assert keep == [h * 4 + i for h in sorted({j // 4 for j in keep}) for i in range(4)]
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x))
