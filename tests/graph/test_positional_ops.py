"""Ops that work by position along a dim: ``roll``, ``tril``/``triu``, ``diff`` and
``cummax``/``cummin`` along a dim that carries channels would count the kept channels only
once some go, handing the next layer other channels than it was trained on (or renumbering
the positions they return), so those channels are kept whole; along dims without channels
(Swin's shifted windows) they prune. ``rot90`` and ``channel_shuffle`` move whole channels
and prune exactly; cross-channel mixing that leaves each element in place (``renorm``,
``local_response_norm``, ``logcumsumexp``) prunes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


class Positional(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.b = nn.Conv2d(12, 12, 3, padding=1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.a(x))
        if self.op == "roll channels":
            y = torch.roll(y, 2, 1)
        elif self.op == "roll flat":
            y = y.roll(5)
        elif self.op == "tril channels":  # channels on the last dim
            y = y.permute(0, 2, 3, 1).tril().permute(0, 3, 1, 2)
        elif self.op == "roll spatial":
            y = torch.roll(y, (1, -1), (2, 3))
        elif self.op == "triu spatial":
            y = y.triu(1)
        elif self.op == "diff channels":
            y = torch.cat([torch.diff(y, dim=1), y[:, :1]], 1)
        elif self.op == "cummax channels":
            y = y.cummax(1).values
        elif self.op == "diff spatial":
            y = F.pad(torch.diff(y, dim=-1), (0, 1))
        elif self.op == "cummin spatial":
            y = y.cummin(2)[0]
        elif self.op == "rot90 there and back":
            y = torch.rot90(torch.rot90(y, 1, (1, 2)), -1, (1, 2))
        elif self.op == "channel shuffle":
            y = nn.ChannelShuffle(4)(y)
        elif self.op == "renorm":
            y = torch.renorm(y, 2, 1, 1.0)
        elif self.op == "repeat counts":  # one count per channel: 12 -> 24 -> back to 12
            y = y.repeat_interleave(torch.tensor([2] * 12), dim=1)[:, ::2]
        elif self.op == "repeat by two":
            y = y.repeat_interleave(2, dim=1).unflatten(1, (-1, 2)).mean(2)
        return self.head(F.relu(self.b(y)))


@pytest.mark.parametrize("op", ["roll channels", "roll flat", "tril channels",
                                "diff channels", "cummax channels", "repeat counts"])
def test_channels_moved_by_position_are_kept_whole(op: str) -> None:
    model, x = Positional(op).eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5)
    assert result.model.a.out_channels == result.model.b.in_channels == 12
    assert result.model.b.out_channels == 6  # the rest prunes
    reasons = " ".join(result.coverage.fixed.values())
    assert any(why in reasons for why in ("by position", "neighbours", "renumber",
                                          "its own count"))


@pytest.mark.parametrize("op", ["roll spatial", "triu spatial", "diff spatial",
                                "cummin spatial", "rot90 there and back", "channel shuffle",
                                "renorm", "repeat by two"])
def test_spatial_shifts_prune_and_match_zeroed_inputs(op: str) -> None:
    model, x = Positional(op).eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5, importance="random", seed=1)
    # (a shuffle of 4 groups of 3 ties channel j of every group: 3 units of 4 channels)
    assert result.model.a.out_channels == (8 if op == "channel shuffle" else 6)
    with torch.no_grad():
        expected = _zero_removed_inputs(model, result.plan)(x)
        torch.testing.assert_close(result.model(x), expected, rtol=1e-4, atol=1e-5)


def test_local_response_norm_prunes_and_logcumsumexp_over_channels_keeps_them() -> None:
    # a running log-sum-exp over channels gives each kept channel the removed ones before
    # it (kept whole, as softmax over channels is; it was cut); over positions it prunes
    class Mixing(nn.Module):
        def __init__(self, scan: int) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 12, 3, padding=1)
            self.head = nn.Conv2d(12, 4, 1)
            self.scan = scan

        def forward(self, x: Tensor) -> Tensor:
            y = F.local_response_norm(F.relu(self.a(x)), 3)
            return self.head(y.logcumsumexp(self.scan))

    x = torch.randn(2, 3, 8, 8)
    result = prune(Mixing(1).eval(), x, ratio=0.5)
    assert result.model.a.out_channels == result.model.head.in_channels == 12
    assert "logcumsumexp accumulates over these channels" in str(result.coverage)
    result = prune(Mixing(2).eval(), x, ratio=0.5)
    assert result.model.a.out_channels == result.model.head.in_channels == 6
    assert result.model(x).shape == (2, 4, 8, 8)
