"""A per-head size computed from the block's input width (nanoGPT's ``C // self.n_head``,
torchvision Swin's ``C // num_heads``): the heads stay, every head loses as many channels,
and the residual width shrinks by that many per head (test_fused_qkv.py has the GPT
forms). Before, the heads, the residual stream and every projection reading it were kept
whole: nanoGPT kept 0.69 of its parameters at ratio 0.5 (its MLPs alone), now 0.27.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_fused_qkv import DIM, HEADS, FusedAttention, FusedGPT, _ids
from torch import Tensor, nn

import prunekit as pk


def test_ratio_zero_and_save_then_load_of_the_computed_form(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, ids = FusedGPT("computed").eval(), _ids()
    with torch.no_grad():
        assert torch.equal(pk.prune(model, ids, ratio=0.0).model(ids), model(ids))
    result = pk.prune(model, ids, ratio=0.5)
    pk.save(result, tmp_path / "gpt")
    torch.manual_seed(1)
    loaded = pk.load(tmp_path / "gpt", FusedGPT("computed").eval())
    with torch.no_grad():
        assert torch.equal(loaded(ids), result.model(ids))
    assert loaded.h[1].attn.n_embd == result.model.h[1].attn.n_embd == DIM // 2


def window_attention(x: Tensor, qkv_weight: Tensor, proj_weight: Tensor,
                     num_heads: int) -> Tensor:
    """torchvision Swin's form: weights and the head count passed to a function, q/k/v
    fused, the per-head size computed from the input width."""
    b, n, c = x.shape
    qkv = F.linear(x, qkv_weight).reshape(b, n, 3, num_heads, c // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = (q * (c // num_heads) ** -0.5) @ k.transpose(-2, -1)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
    return F.linear(out, proj_weight)


class SwinLike(nn.Module):
    def __init__(self, dim: int = 48, num_heads: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.head = nn.Linear(dim, 5)
        self.num_heads = num_heads

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        x = x + window_attention(self.norm(x), self.qkv.weight, self.proj.weight,
                                 self.num_heads)
        return self.head(x.mean(1))


def test_fused_qkv_with_the_head_count_passed_to_a_function() -> None:
    torch.manual_seed(0)
    model, x = SwinLike().eval(), torch.randn(2, 7, 8)
    result = pk.prune(model, x, ratio=0.5)
    pruned = result.model
    width = pruned.embed.out_features
    assert width < 48 and width % 3 == 0
    assert pruned.qkv.weight.shape == (3 * width, width)
    assert pruned.proj.weight.shape == (width, width)
    assert result.coverage.fixed == {}
    assert sum(p.numel() for p in pruned.parameters()) < 0.4 * sum(
        p.numel() for p in model.parameters())
    with torch.no_grad():
        assert pruned(x).shape == (2, 5)


def test_a_per_head_size_from_a_plain_attribute_still_keeps_the_heads_whole() -> None:
    class Fixed(FusedAttention):
        def forward(self, x: Tensor) -> Tensor:
            b, t, c = x.size()
            size = self.n_embd // self.n_head  # a plain int: it would not follow
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            q, k, v = (p.view(b, t, self.n_head, size).transpose(1, 2) for p in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v)
            return self.c_proj(y.transpose(1, 2).reshape(b, t, c))

    torch.manual_seed(0)
    model, x = Fixed("computed").eval(), torch.randn(1, 5, DIM)
    with torch.no_grad():
        before = model(x)
    with pytest.warns(UserWarning, match="prune removed nothing"):
        result = pk.prune(model, x, ratio=0.5, ignore=[model.c_proj])
    assert "heads of 8, a size that no int attribute" in result.coverage.fixed["c_attn.weight"]
    assert result.model.c_attn.weight.shape == (3 * DIM, DIM) and result.model.n_head == HEADS
    with torch.no_grad():
        assert torch.equal(result.model(x), before)


class LiteMLA(nn.Module):
    """EfficientViT's ReLU linear attention (its multi-scale aggregation left out): q, k
    and v of each head side by side, split with ``reshape(qkv, (B, -1, 3 * self.dim,
    H * W))``, the head count left to -1."""

    def __init__(self, channels: int = 32, dim: int = 8) -> None:
        super().__init__()
        self.dim, total = dim, channels
        self.qkv = nn.Conv2d(channels, 3 * total, 1, bias=False)
        self.proj = nn.Conv2d(total, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.qkv(x)
        b, _, h, w = list(qkv.size())
        qkv = torch.reshape(qkv, (b, -1, 3 * self.dim, h * w)).transpose(-1, -2)
        q, k, v = qkv[..., :self.dim], qkv[..., self.dim:2 * self.dim], qkv[..., 2 * self.dim:]
        v = F.pad(v, (0, 1), mode="constant", value=1)
        out = torch.matmul(F.relu(q), torch.matmul(F.relu(k).transpose(-1, -2), v))
        out = out[..., :-1] / (out[..., -1:] + 1e-15)
        return self.proj(torch.reshape(out.transpose(-1, -2), (b, -1, h, w)))


def test_a_per_head_size_written_as_an_attribute_times_a_literal_lets_heads_go() -> None:
    # was: heads kept whole, "store it as self.head_dim or write -1" (the count was -1)
    torch.manual_seed(0)
    model, x = LiteMLA().eval(), torch.randn(1, 32, 8, 8)
    result = pk.prune(model, x, ratio=0.5, ignore=[model.proj])
    assert result.model.qkv.out_channels == 48 and result.model.dim == 8
    keep = result.plan["modules"]["proj"]["keep"]["in"]
    assert keep == [i for i in range(32) if i // 8 in {j // 8 for j in keep}]  # whole heads
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.proj.weight[:, [i for i in range(32) if i not in keep]] = 0
        for inputs in (x, torch.randn(2, 32, 6, 10)):
            torch.testing.assert_close(result.model(inputs), zeroed(inputs))
