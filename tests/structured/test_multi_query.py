"""Multi-query attention written with broadcasting: one key/value head of size 1 along the
heads dim meets every query head in ``q @ k.transpose(-2, -1)`` and ``probs @ v``. Query
heads prune (pruned = zeroed); the shared key/value head keeps its width. The fused
projection is split by ``(self.embed_dim, self.kv_dim, self.kv_dim)``, as GPT-BigCode
splits it. The same through ``scaled_dot_product_attention(..., enable_gqa=True)``, as
Transformers runs GPT-BigCode: query heads prune too, and ``num_key_value_groups`` (the
count a masked call repeats the key/value head to) is rewritten with them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.structured.residual import Residual
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


class MultiQuery(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 4, path: str = "broadcast") -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.embed_dim, self.kv_dim = dim, dim // heads
        self.num_key_value_groups = heads  # query heads per key/value head
        self.path = path
        self.c_attn = nn.Linear(dim, self.embed_dim + 2 * self.kv_dim)
        self.c_proj = nn.Linear(self.embed_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.c_attn(x).unsqueeze(1).split((self.embed_dim, self.kv_dim, self.kv_dim),
                                                     dim=3)
        q = q.view(b, n, -1, self.head_dim).transpose(1, 2)  # [b, heads, n, d]
        if self.path == "gqa":
            out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        elif self.path == "repeat":  # the path Transformers takes when a mask is passed
            k, v = (t.expand(b, self.num_key_value_groups, n, self.head_dim) for t in (k, v))
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(-1) @ v
        return self.c_proj(out.transpose(1, 2).reshape(b, n, -1))


def Net(path: str = "broadcast") -> Residual:
    return Residual("attn", MultiQuery(path=path), 6, 16, 3)


@pytest.mark.parametrize("path", ["broadcast", "gqa"])
def test_query_heads_prune_and_the_shared_key_value_head_stays(path: str) -> None:
    torch.manual_seed(0)
    model, x = Net(path).eval(), torch.randn(2, 5, 6)
    result = prune(model, x, ratios={"attn.c_attn": 0.5}, importance="random", seed=0)
    attn = result.model.attn
    assert attn.embed_dim == 8 and attn.kv_dim == 4 and attn.head_dim == 4
    assert attn.c_attn.out_features == 8 + 2 * 4 and attn.c_proj.in_features == 8
    keep = result.plan["modules"]["attn.c_proj"]["keep"]["in"]
    assert keep == [h * 4 + i for h in sorted({j // 4 for j in keep}) for i in range(4)]
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x))


def test_the_repeat_count_follows_the_query_heads() -> None:
    """Traced through ``enable_gqa``, run afterwards through the repeat path: the rewritten
    ``num_key_value_groups`` repeats the key/value head to the pruned head count."""
    torch.manual_seed(0)
    model, x = Net("gqa").eval(), torch.randn(2, 5, 6)
    result = prune(model, x, ratios={"attn.c_attn": 0.5}, importance="random", seed=0)
    attn = result.model.attn
    assert attn.num_key_value_groups == attn.c_proj.in_features // attn.head_dim == 2
    with torch.no_grad():
        expected = result.model(x)
        attn.path = "repeat"
        torch.testing.assert_close(result.model(x), expected)
