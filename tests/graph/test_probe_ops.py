"""Ops this session's probes met unmapped or mapped too coarsely: an ensemble layer written
with ``baddbmm`` (MBPO/PETS: nothing pruned), a Beta policy's ``lgamma``/``digamma``
(refused), ``triplet_margin_loss`` and ``cosine_embedding_loss`` (refused)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunekit as pk


class EnsembleLinear(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, fused: bool, members: int = 5) -> None:
        super().__init__()
        self.fused = fused
        self.weight = nn.Parameter(torch.randn(members, fan_in, fan_out) * 0.1)
        self.bias = nn.Parameter(torch.randn(members, 1, fan_out) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.bmm(x, self.weight) + self.bias


class Ensemble(nn.Module):
    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.l1 = EnsembleLinear(13, 48, fused)
        self.l2 = EnsembleLinear(48, 48, fused)
        self.out = EnsembleLinear(48, 20, fused)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        x = torch.cat([obs, act], -1).unsqueeze(0).expand(5, -1, -1)
        return self.out(F.silu(self.l2(F.silu(self.l1(x)))))


def test_baddbmm_prunes_as_bmm_plus_bias_does() -> None:
    inputs = (torch.randn(4, 10), torch.randn(4, 3))
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        results.append(pk.prune(Ensemble(fused).eval(), inputs, ratio=0.5))
    fused, plain = results
    assert fused.model.l1.weight.shape == (5, 13, 24) and fused.plan == plain.plan
    with torch.no_grad():
        assert torch.allclose(fused.model(*inputs), plain.model(*inputs), atol=1e-6)


class Losses(nn.Module):
    def __init__(self, kind: str, reduction: str) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))
        self.kind, self.reduction = kind, reduction

    def forward(self, a: Tensor, p: Tensor, n: Tensor) -> Tensor:
        za, zp, zn = self.enc(a), self.enc(p), self.enc(n)
        if self.kind == "triplet":
            return F.triplet_margin_loss(za, zp, zn, reduction=self.reduction)
        if self.kind == "cosine":
            return F.cosine_embedding_loss(za, zp, torch.ones(a.shape[0]),
                                           reduction=self.reduction)
        beta = torch.distributions.Beta(F.softplus(za) + 1, F.softplus(zp) + 1)
        return beta.log_prob(torch.sigmoid(zn).clamp(0.01, 0.99)).sum(-1)


@pytest.mark.parametrize("kind", ["triplet", "cosine", "beta"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_losses_and_special_functions_prune_the_encoder(kind: str, reduction: str) -> None:
    torch.manual_seed(0)
    model = Losses(kind, reduction).eval()
    inputs = tuple(torch.randn(4, 8) for _ in range(3))
    result = pk.prune(model, inputs, ratio=0.5)
    assert result.model.enc[0].out_features == 16 and result.model.enc[2].out_features == 8
    with torch.no_grad():
        assert result.model(*inputs).shape == model(*inputs).shape
