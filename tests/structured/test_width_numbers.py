"""A number the code computes from a width that pruning changes (an attention scale
``1 / math.sqrt(ch)`` with ``ch`` read from a shape, or the default scale of
``scaled_dot_product_attention``, which follows the head width) makes the pruned model
differ from the unpruned one beyond the removed channels. prunekit prunes such models (the
scale is the model's own rule), and says so in a warning."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.structured import prune

WARNING = "computes a number from a width that this prune changed"


class SharedHeads(nn.Module):
    """nanoGPT's attention: ``C // self.n_head`` per head, so every head shrinks."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.n_head, self.n_embd = how, 2, 16
        self.c_attn, self.c_proj = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.size()
        q, k, v = (part.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for part in self.c_attn(x).split(self.n_embd, dim=2))
        if self.how == "sdpa_default":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.how == "sdpa_constant":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25)
        else:  # the scale computed from the width read
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            y = scores.softmax(-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class Residual(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.inp, self.attn, self.out = nn.Linear(8, 16), SharedHeads(how), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        return self.out(h + self.attn(h))


@pytest.mark.parametrize("how", ["sdpa_default", "computed"])
def test_a_scale_that_follows_the_head_width_is_reported(how: str) -> None:
    model, x = Residual(how).eval(), torch.randn(2, 5, 8)
    with pytest.warns(UserWarning, match=WARNING) as caught:
        result = prune(model, x, ratio=0.5)
    assert result.model.attn.c_attn.out_features == 24  # every head shrank
    assert any("test_width_numbers.py" in str(w.message) for w in caught)


def test_a_constant_scale_is_not_reported() -> None:
    model, x = Residual("sdpa_constant").eval(), torch.randn(2, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = prune(model, x, ratio=0.5)
    assert result.model.attn.c_attn.out_features == 24


def test_whole_heads_keep_the_scale_and_are_not_reported() -> None:
    """Heads that go whole leave the head width, and the default scale, as they were."""

    class WholeHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_heads, self.head_dim = 2, 8
            self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

        def forward(self, x: Tensor) -> Tensor:
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(
                2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v)
            return x + self.proj(y.transpose(1, 2).reshape(b, t, -1))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = prune(WholeHeads().eval(), torch.randn(2, 5, 16), ratio=0.5)
    assert result.model.num_heads == 1 and result.model.head_dim == 8


def test_ratio_zero_reports_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prune(Residual("sdpa_default").eval(), torch.randn(2, 5, 8), ratio=0.0)


class ReadoutScale(nn.Module):
    """A width read from a shape used as a number in two more spellings: a power with a
    float exponent (``C ** -0.5``: ``int.__pow__`` declines and ``float.__rpow__`` computes
    it) and a tensor's scalar operand (``z / z.shape[-1]``). Before, neither warned (found
    by the self-supervised and scientific-ML probes). Nor did a width put in a tensor as its
    value (``torch.tensor(dim)`` cast to float, ``torch.full((), dim)``: RAFT's correlation
    scale, found by the low-level vision probe)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(3, 32), nn.Linear(32, 1)

    def forward(self, x: Tensor) -> Tensor:
        z = torch.cos(self.a(x))
        width = z.shape[-1]
        if self.how == "tensor":  # RAFT's corr / torch.sqrt(torch.tensor(dim).float())
            return self.b(z / torch.sqrt(torch.tensor(width).float()))
        if self.how == "full":
            return self.b(z * torch.full((), width).rsqrt())
        if self.how == "new_full":
            return self.b(z * z.new_full((), width).rsqrt())
        scale = width ** -0.5 if self.how == "pow" else None
        return self.b(z * scale if scale is not None else z / width)


@pytest.mark.parametrize("how", ["pow", "divide", "tensor", "full", "new_full"])
def test_more_spellings_of_a_width_as_a_number_are_reported(how: str) -> None:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=WARNING):
        result = prune(ReadoutScale(how).eval(), torch.randn(8, 3), ratio=0.5)
    assert result.model.a.out_features == 16
