"""A parameter read by ``einsum`` as a weight with several axes (stacked experts:
``"...d,ehd->...eh"`` then ``"...eh,edh,...e->...d"``): the axes it shares with an
operand's channels are cut with them, the one axis that alone makes the result's letter
makes its channels, and the others stay whole. Before, the weight was kept whole and with
it every channel it met (the residual stream of the whole model)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from tests.llm.moe_models import _Stack
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

import prunekit as pk


class EinsumExperts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.head = nn.Linear(8, 16), nn.Linear(16, 4)
        self.router = nn.Linear(16, 4)
        self.experts = _Stack(16, 24, 4)  # up [4, 24, 16], down [4, 16, 24]

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        weights, chosen = F.softmax(self.router(h), -1).topk(2, dim=-1)
        return self.head(h + self.experts(h, chosen, weights))


def test_stacked_expert_weights_are_cut_with_the_residual_stream() -> None:
    torch.manual_seed(0)
    model = EinsumExperts().eval()
    result = pk.prune(model, torch.randn(6, 8), ratio=0.5)
    pruned = result.model
    assert pruned.inp.out_features == pruned.head.in_features == 8
    # the residual width is cut in both weights; experts and hidden units stay
    assert pruned.experts.up.shape == (4, 24, 8)
    assert pruned.experts.down.shape == (4, 8, 24)
    reference = _zero_removed_inputs(model, result.plan)
    kept = result.plan["params"]["experts.up"]["keep"]["2"]
    removed = sorted(set(range(16)) - set(kept))
    with torch.no_grad():
        reference.experts.up[:, :, removed] = 0
        for rows in (6, 2):
            x = torch.randn(rows, 8)
            torch.testing.assert_close(pruned(x), reference(x))


class PickedExperts(nn.Module):
    """gpt-fast's Mixtral experts: each token's chosen experts' weights gathered by an
    index per token and slot (``w1[expert_indices]``: [T, A, H, D]) and applied by
    ``einsum``."""

    def __init__(self, experts: int = 4, dim: int = 16, hidden: int = 24) -> None:
        super().__init__()
        self.inp, self.head = nn.Linear(8, dim), nn.Linear(dim, 4)
        self.router = nn.Linear(dim, experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(experts, hidden, dim) / 4)
        self.w3 = nn.Parameter(torch.randn(experts, hidden, dim) / 4)
        self.w2 = nn.Parameter(torch.randn(experts, dim, hidden) / 5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        weights, chosen = F.softmax(self.router(h), -1).topk(2, dim=-1)  # [T, 2]
        x1 = F.silu(torch.einsum("ti,taoi->tao", h, self.w1[chosen]))
        x3 = torch.einsum("ti,taoi->tao", h, self.w3[chosen])
        out = torch.einsum("tao,taio->tai", x1 * x3, self.w2[chosen])
        return self.head(h + (out * weights[..., None]).sum(1))


def test_weights_gathered_per_token_are_cut_in_every_expert() -> None:
    torch.manual_seed(0)
    model = PickedExperts().eval()
    result = pk.prune(model, torch.randn(5, 8), ratio=0.5)
    pruned = result.model
    assert pruned.w1.shape == pruned.w3.shape == (4, 12, 8)
    assert pruned.w2.shape == (4, 8, 12)
    reference = _zero_removed_inputs(model, result.plan)
    params = result.plan["params"]
    with torch.no_grad():
        for name, axis, width in (("w1", 2, 16), ("w3", 2, 16), ("w2", 2, 24)):
            removed = sorted(set(range(width)) - set(params[name]["keep"][str(axis)]))
            getattr(reference, name)[:, :, removed] = 0
        for rows in (5, 9):
            x = torch.randn(rows, 8)
            torch.testing.assert_close(pruned(x), reference(x))


class LinformerProjection(nn.Module):
    """lucidrains' Linformer: keys and values projected along the tokens by a parameter
    ``P [n, k]`` with ``einsum("bnd,nk->bkd")``: the result carries the keys' channels (d)
    and the projected length (k, made by P)."""

    def __init__(self, heads: int = 4, dim: int = 32, tokens: int = 16, k: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.inp = nn.Linear(16, dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.p = nn.Parameter(torch.randn(tokens, k) / 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        b, n, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)

        k, v = (torch.einsum("bnd,nk->bkd", f(x), self.p) for f in (self.k, self.v))
        att = (heads(self.q(x)) @ heads(k).transpose(-1, -2) * 0.35).softmax(-1)
        return self.o((att @ heads(v)).transpose(1, 2).reshape(b, n, -1)) + x


def test_an_activations_channels_win_over_a_length_a_weight_makes() -> None:
    # before, the projected length k (first in the result) was cut and q/k/v kept whole
    torch.manual_seed(0)
    model = LinformerProjection().eval()
    result = pk.prune(model, torch.randn(2, 16, 16), ratio=0.5)
    pruned = result.model
    assert pruned.p.shape == (16, 8)
    assert pruned.q.out_features == pruned.k.out_features == pruned.v.out_features == 16
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name in ("q", "k", "v"):
            keep = result.plan["modules"][name]["keep"]["out"]
            gone = sorted(set(range(32)) - set(keep))
            getattr(reference, name).weight[gone] = 0
            getattr(reference, name).bias[gone] = 0
    x = torch.randn(3, 16, 16)
    torch.testing.assert_close(pruned(x), reference(x))
