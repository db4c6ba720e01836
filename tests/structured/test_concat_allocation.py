"""Allocation of a group that spans a concat: every producing layer keeps a channel and the
group keeps exactly its (rounded) count — round_to, ratio, max_keep and global ranking."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from prunekit.allocation.ratio import Allocation, allocate
from prunekit.graph.dependency import Group, Member
from prunekit.structured import prune


class _CatPlusResidual(nn.Module):
    """``cat(a(x), b(x)) + c(x)`` feeds ``head``: one group of 16 units whose producers are
    ``a`` (units 0-7), ``b`` (8-15) and ``c`` (all 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(3, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(torch.cat([self.a(x), self.b(x)], 1) + self.c(x)))


def _quiet_branch_model() -> _CatPlusResidual:
    torch.manual_seed(0)
    model = _CatPlusResidual().eval()
    with torch.no_grad():  # every channel of b ranks below every channel of a
        model.a.weight.mul_(100.0)
        model.b.weight.mul_(1e-3)
        model.b.bias.mul_(1e-3)
    return model


@pytest.mark.parametrize(("ratio", "round_to", "width"),
                         [(0.5, 8, 8), (0.6, 4, 8), (0.5, None, 8), (0.75, None, 4)])
def test_prune_concat_keeps_rounded_width_and_every_branch(
        ratio: float, round_to: int | None, width: int) -> None:
    x = torch.randn(2, 3, 5, 5)
    result = prune(_quiet_branch_model(), x, ratio=ratio, round_to=round_to)
    model = result.model
    assert isinstance(model, _CatPlusResidual)
    assert model.head.in_channels == width == model.c.out_channels
    assert model.a.out_channels + model.b.out_channels == width
    assert model.b.out_channels == 1  # its best channel, nothing more
    assert model(x).shape == (2, 4, 5, 5)


def _concat_group(parts: int, part: int) -> Group:
    """Units 10.. of ``parts`` concatenated layers of ``part`` channels each, plus a layer
    ``c`` of all of them (the residual partner) and a consumer."""
    units = torch.arange(parts * part) + 10
    members = [Member("module", f"p{i}", "out", units[i * part:(i + 1) * part], True)
               for i in range(parts)]
    members += [Member("module", "c", "out", units, True),
                Member("module", "head", "in", units, False)]
    return Group(0, units, tuple(members))


def _kept_per_part(mask: Tensor, parts: int, part: int) -> list[int]:
    return [int(mask[i * part:(i + 1) * part].sum()) for i in range(parts)]


def test_allocate_concat_reserves_each_layers_best_then_fills_by_score() -> None:
    group = _concat_group(2, 8)
    score = torch.cat([torch.arange(8.0) + 100, torch.tensor([1.0, 3, 2, 0, 3, 1, 0, 2])])
    for config in (Allocation(ratio=0.5, round_to=8), Allocation(ratio=0.5)):
        (mask,) = allocate([group], [score], config)
        assert int(mask.sum()) == 8
        # b's best channel (the first of its two 3s), then a's seven best
        assert mask.nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6, 7, 9]
    (mask,) = allocate([group], [score], Allocation(ratio=0.6, round_to=4))
    assert int(mask.sum()) == 8 and _kept_per_part(mask, 2, 8) == [7, 1]


def test_allocate_concat_with_more_layers_than_the_count_rounds_up() -> None:
    group = _concat_group(3, 4)
    score = torch.arange(12.0)
    (mask,) = allocate([group], [score], Allocation(ratio=0.95))
    assert _kept_per_part(mask, 3, 4) == [1, 1, 1]  # one each: three, not the one of ratio
    (mask,) = allocate([group], [score], Allocation(ratio=0.95, round_to=4))
    assert _kept_per_part(mask, 3, 4) == [1, 1, 2]  # three rounds up to four, not six
    (mask,) = allocate([group], [score], Allocation(ratio=0.0, max_keep=0.1))
    assert _kept_per_part(mask, 3, 4) == [1, 1, 1]  # a layer needs a channel above max_keep


def test_global_ranking_spends_the_budget_a_concat_group_cannot_give() -> None:
    cat = _concat_group(2, 4)
    plain = Group(1, torch.arange(8) + 30, (Member("module", "d", "out",
                                                   torch.arange(8) + 30, True),))
    cat_score = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.01, 0.02, 0.03, 0.04])
    plain_score = torch.arange(8.0) + 1
    masks = allocate([cat, plain], [cat_score, plain_score],
                     Allocation(ratio=0.5, global_ranking=True))
    # 8 of 16 channels go: the concat group can lose 6 (a and b keep one each), d loses 2
    assert _kept_per_part(masks[0], 2, 4) == [1, 1]
    assert masks[1].tolist() == [False] * 2 + [True] * 6
    assert sum(int(m.sum()) for m in masks) == 8


def test_allocate_without_concat_is_plain_top_k() -> None:
    units = torch.arange(6) + 10
    group = Group(0, units, (Member("module", "a", "out", units, True),
                             Member("module", "b", "out", units, True)))
    score = torch.tensor([2.0, 1.0, 2.0, 0.0, 2.0, 1.0])
    (mask,) = allocate([group], [score], Allocation(ratio=0.5))
    assert mask.tolist() == [True, False, True, False, True, False]  # ties to the lower index
