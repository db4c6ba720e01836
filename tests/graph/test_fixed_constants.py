"""A tensor the code makes at a fixed size (``torch.arange(n)``, ``torch.zeros(T, dim)``,
Bloom's ALiBi built from the head count) that meets channels along a dim it spans keeps
those channels whole, with the reason, instead of breaking the pruned model's forward."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from prunekit.structured import prune

FIXED = "meets a tensor the code makes at a fixed size along these channels"


class SinusoidalAdd(nn.Module):
    """Adds a position code computed in the forward at a width held by an attribute, or
    read from the activation's shape (``sized``). Either way its values depend on the
    channel positions, so neither follows a cut: the kept channels would get other codes
    than the ones they were trained with."""

    def __init__(self, sized: bool) -> None:
        super().__init__()
        self.sized, self.width = sized, 8
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        width = h.shape[-1] if self.sized else self.width
        code = torch.sin(torch.arange(width, dtype=h.dtype) / width)
        return self.out(self.b(torch.relu(h + code)))


def test_a_constant_of_fixed_width_keeps_the_channels_it_meets_whole() -> None:
    torch.manual_seed(0)
    model, x = SinusoidalAdd(sized=False).eval(), torch.randn(2, 5, 4)
    result = prune(model, x, ratio=0.5)  # strict: no error, the rest prunes
    pruned = result.model
    assert pruned.a.out_features == 8 and pruned.b.in_features == 8
    assert pruned.b.out_features == 4  # b's output meets no constant
    assert FIXED in result.coverage.fixed["a.weight"]
    assert pruned(x).shape == model(x).shape == (2, 5, 3)


def test_a_position_code_sized_from_the_activation_keeps_the_channels_whole() -> None:
    """Was: ``arange(h.shape[-1])`` took the channels' labels, and the pruned model added
    ``sin(arange(4) / 4)`` where the kept channels had ``sin(arange(8)[kept] / 8)``."""
    torch.manual_seed(0)
    model, x = SinusoidalAdd(sized=True).eval(), torch.randn(2, 5, 4)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.a.out_features == 8 and "arange" in result.coverage.fixed["a.weight"]
    assert pruned.b.out_features == 4  # b's output meets no position code
    with torch.no_grad():
        assert pruned(x).shape == (2, 5, 3)


def test_a_constant_broadcast_along_the_channels_does_not_block_them() -> None:
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.out = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            keep = torch.ones(x.shape[0], x.shape[1], 1)  # (B, T, 1): broadcast over width
            return self.out(torch.relu(self.a(x)) * keep)

    model, x = Masked().eval(), torch.randn(2, 5, 4)
    result = prune(model, x, ratio=0.5)
    assert result.model.a.out_features == 4 and not result.coverage.fixed.get("a.weight")


def _alibi(heads: int, batch: int, length: int) -> Tensor:
    slopes = torch.tensor([2 ** (-8 * (i + 1) / heads) for i in range(heads)])
    return (slopes[:, None] * torch.arange(length)[None, :]).repeat(batch, 1, 1).reshape(
        batch * heads, 1, length)


class AlibiAttention(nn.Module):
    """Bloom's bias: one slope per head, made from the head count in the forward and added
    to the scores with ``baddbmm``. Pruning heads would need other slopes, so the heads
    stay; the MLP still prunes."""

    def __init__(self, dim: int = 24, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = (p.reshape(b * self.heads, t, self.head_dim) for p in (q, k, v))
        scores = _alibi(self.heads, b, t).baddbmm(q, k.transpose(1, 2),
                                                  alpha=1 / math.sqrt(self.head_dim))
        y = (scores.softmax(-1) @ v).view(b, self.heads, t, self.head_dim)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, -1))
        return x + self.mlp(x)


def test_alibi_keeps_the_heads_and_the_mlp_prunes() -> None:
    torch.manual_seed(0)
    model, x = AlibiAttention().eval(), torch.randn(2, 6, 24)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.heads == 4 and pruned.mlp[0].out_features == 16
    assert FIXED in result.coverage.fixed["qkv.weight"]
    assert pruned(x).shape == (2, 6, 24)


@pytest.mark.parametrize("sized", [False, True])
def test_ratio_zero_is_still_identical(sized: bool) -> None:
    torch.manual_seed(0)
    model, x = SinusoidalAdd(sized).eval(), torch.randn(2, 5, 4)
    result = prune(model, x, ratio=0.0)
    assert torch.equal(result.model(x), model(x))


class ZeroBiasAttention(nn.Module):
    """T5's layers without a relative bias: ``torch.zeros((1, self.n_heads, T, T))`` added
    to the scores. Its head dim is sized by the attribute the heads rewrite, so it follows."""

    def __init__(self, dim: int = 24, n_heads: int = 4) -> None:
        super().__init__()
        self.n_heads, self.d_kv, self.spare = n_heads, dim // n_heads, 1
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.o = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.n_heads, self.d_kv).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        bias = torch.zeros((1, self.n_heads, t, t), dtype=x.dtype)
        unused = torch.ones(self.d_kv + self.spare)  # meets no channels: stays as it is
        scores = q @ k.transpose(-2, -1) + bias + unused.sum()
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        return x + self.o(y)


def test_a_zeros_tensor_sized_by_the_head_count_follows_the_heads() -> None:
    torch.manual_seed(0)
    model, x = ZeroBiasAttention().eval(), torch.randn(2, 5, 24)
    result = prune(model, x, ratios={"q": 0.5})
    pruned = result.model
    assert pruned.n_heads == 2 and pruned.q.out_features == 12 == pruned.o.in_features
    assert pruned.d_kv == 6 and result.plan["attrs"][""] == {"n_heads": 2}
    assert pruned(x).shape == (2, 5, 24)


def test_a_uniform_constant_sized_by_a_width_attribute_follows_the_cut() -> None:
    class ZerosAdd(SinusoidalAdd):
        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x) + torch.full((self.width,), 0.5)
            return self.out(self.b(torch.relu(h)))

    torch.manual_seed(0)
    model, x = ZerosAdd(sized=False).eval(), torch.randn(2, 5, 4)
    result = prune(model, x, ratio=0.5)
    assert result.model.a.out_features == 4 == result.model.width
    assert model.width == 8
    assert result.model(x).shape == (2, 5, 3)
