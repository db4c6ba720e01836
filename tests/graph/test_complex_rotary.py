"""Rotary embeddings written with complex numbers, as Llama 4 and DeepSeek-V2 write them:
``view_as_complex`` pairs the last dim's entries, ``torch.polar`` makes the rotations,
``view_as_real`` splits the pairs back. Heads prune through them (pruned = zeroed); the
two channels of a pair go together."""

from __future__ import annotations

import torch
from tests.structured.residual import Residual
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


def rotate(x: Tensor, angles: Tensor) -> Tensor:
    """``x [b, n, heads, d]`` turned by ``angles [n, d // 2]``, pair ``(2i, 2i + 1)`` as one
    complex number."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    turns = torch.polar(torch.ones_like(angles), angles)
    return torch.view_as_real(pairs * turns[:, None]).flatten(3)


class ComplexRotaryAttention(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.o = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        angles = torch.arange(n)[:, None] * 0.1 ** torch.arange(self.head_dim // 2)
        q, k, v = (proj(x).view(b, n, self.num_heads, self.head_dim)
                   for proj in (self.q, self.k, self.v))
        q, k = rotate(q, angles).transpose(1, 2), rotate(k, angles).transpose(1, 2)
        probs = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(-1)
        out = (probs @ v.transpose(1, 2)).transpose(1, 2)
        return self.o(out.reshape(b, n, self.num_heads * self.head_dim))


class ComplexGate(nn.Module):
    """A width of channel pairs turned by a learned angle each: pairs, not heads, go."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.angle = nn.Parameter(torch.randn(dim))

    def forward(self, x: Tensor) -> Tensor:
        pairs = torch.view_as_complex(self.up(x).reshape(*x.shape[:-1], -1, 2))
        turned = pairs * torch.polar(torch.ones_like(self.angle), self.angle)
        return self.down(torch.view_as_real(turned).flatten(-2))


def test_heads_prune_through_a_complex_rotary_embedding() -> None:
    torch.manual_seed(0)
    model, x = Residual("attn", ComplexRotaryAttention(), 6, 16, 3).eval(), torch.randn(2, 5, 6)
    result = prune(model, x, ratios={"attn.q": 0.5}, importance="random", seed=0)
    attn = result.model.attn
    assert attn.num_heads == 2 and attn.q.out_features == attn.o.in_features == 8
    keep = result.plan["modules"]["attn.o"]["keep"]["in"]
    assert keep == [h * 4 + i for h in sorted({j // 4 for j in keep}) for i in range(4)]
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x))


def test_the_two_channels_of_a_complex_pair_go_together() -> None:
    torch.manual_seed(0)
    model, x = Residual("gate", ComplexGate(), 6, 8, 3).eval(), torch.randn(2, 5, 6)
    result = prune(model, x, ratios={"gate.up": 0.5}, importance="random", seed=0)
    gate = result.model.gate
    assert gate.up.out_features == gate.down.in_features == 8 and gate.angle.shape == (4,)
    keep = result.plan["modules"]["gate.down"]["keep"]["in"]
    assert keep == [2 * p + i for p in sorted({j // 2 for j in keep}) for i in range(2)]
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x))
