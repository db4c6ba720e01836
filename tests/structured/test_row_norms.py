"""A LayerNorm/RMSNorm over trailing dims that carry no channels normalises each row on its
own: timm's and DiT's ``qk_norm = LayerNorm(head_dim)`` after the heads split (whole
heads go), a LayerNorm over a conv's frequency axis. Before, joining the norm's weight with
every row tied all heads (all conv channels) into one unit, and nothing was pruned."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.graph.test_unfold import _zero_removed_outputs
from torch import Tensor, nn

import prunekit as pk


class QkNormAttention(nn.Module):
    """timm's ``Attention(qk_norm=True)``: one fused qkv, a LayerNorm per head on q and k."""

    def __init__(self, how: str, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.how, self.num_heads, self.head_dim = how, heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        norm = nn.RMSNorm if how == "rms" else nn.LayerNorm
        self.q_norm, self.k_norm = norm(self.head_dim), norm(self.head_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.how == "functional":
            q = F.layer_norm(q, (self.head_dim,), self.q_norm.weight, self.q_norm.bias)
            k = F.layer_norm(k, (self.head_dim,), self.k_norm.weight, self.k_norm.bias)
        else:
            q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("how", ["module", "functional", "rms"])
def test_a_per_head_norm_lets_whole_heads_go(how: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = QkNormAttention(how).eval(), torch.randn(2, 6, 32)
    with torch.no_grad():  # a norm that is not the identity
        for norm in (model.q_norm, model.k_norm):
            norm.weight.uniform_(0.5, 1.5)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=1)
    pruned = result.model
    assert (pruned.num_heads, pruned.head_dim) == (2, 8)
    assert pruned.q_norm.weight.shape == (8,) and pruned.qkv.out_features == 48
    assert "normalises each row" in result.coverage.fixed["q_norm.weight"]
    zeroed = _zero_removed_outputs(model, result.plan)  # a removed head's v is zero
    with torch.no_grad():
        for inputs in (x, torch.randn(3, 4, 32)):
            torch.testing.assert_close(pruned(inputs), zeroed(inputs), rtol=1e-4, atol=1e-5)
    pk.save(result, tmp_path / "p")
    loaded = pk.load(tmp_path / "p", QkNormAttention(how).eval())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x), rtol=0, atol=0)


class FrequencyNorm(nn.Module):
    """A speech front end: a LayerNorm over the frequency axis of a conv's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(1, 16, 3, padding=1), nn.LayerNorm(12)
        self.out = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.norm(self.conv(x).relu()))


def test_a_norm_over_the_frequency_axis_passes_conv_channels_through() -> None:
    torch.manual_seed(0)
    model, x = FrequencyNorm().eval(), torch.randn(2, 1, 7, 12)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.conv.out_channels == result.model.out.in_channels == 8
    assert result.model.norm.normalized_shape == (12,)
    keep = result.plan["modules"]["conv"]["keep"]["out"]
    zeroed = FrequencyNorm().eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.out.weight[:, [c for c in range(16) if c not in keep]] = 0
        for inputs in (x, torch.randn(1, 1, 5, 12)):
            torch.testing.assert_close(result.model(inputs), zeroed(inputs), rtol=1e-5,
                                       atol=1e-6)


def test_a_norm_over_the_channels_still_joins_them() -> None:
    """The usual case, a LayerNorm over the channels themselves, is cut with them."""
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)).eval()
    result = pk.prune(model, torch.randn(3, 8), ratio=0.5)
    assert result.model[1].normalized_shape == (8,) and result.model[0].out_features == 8
