"""Batched group scoring (every group's scores in one pass, narrow views of an
element-wise criterion in one call) gives exactly what scoring one by one gives."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tests.structured.zoo import ZOO, ZooEntry

from prunekit.graph.dependency import (
    Group,
    build_groups,
)
from prunekit.graph.labels import positions_in
from prunekit.graph.trace import trace
from prunekit.importance.base import ElementwiseCriterion, get_criterion, is_elementwise
from prunekit.importance.group import BNScale, ElementNorm, MemberViews, _all_row_sums, _row_sums
from prunekit.structured.adapters import find_adapter
from prunekit.structured.pruning import _axes_of, _member_views


def _inputs(entry: ZooEntry) -> list[tuple[Group, list[MemberViews]]]:
    model, example = entry.build().eval(), entry.example_inputs()
    graph = build_groups(model, trace(model, example, find_adapter), axes_of=_axes_of)
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    return [(g, _member_views(g, modules, params, model)) for g in graph.groups]


def _reference(criterion: ElementNorm, group: Group, members: list[MemberViews],
               generator: torch.Generator) -> torch.Tensor:
    """ElementNorm.member_scores as it was before batching: one group at a time."""
    element = get_criterion(criterion.name)
    size = group.size
    slots, values = [], []
    for i, entry in enumerate(members):
        views = [v for v in entry.views if v.kind in criterion.kinds]
        if not views:
            continue
        rows, pos = positions_in(entry.member.units, group.units, offset=i * size)
        per_row = element.score(views[0].tensor, generator=generator).sum(1).float()
        for view in views[1:]:
            per_row = per_row + element.score(view.tensor, generator=generator).sum(1).float()
        values.append(per_row if rows.numel() == per_row.numel() else per_row[rows])
        slots.append(pos)
    total = len(members) * size
    if not slots:
        return torch.full((len(members), size), float("nan"))
    index, value = torch.cat(slots), torch.cat(values)
    raw = torch.zeros(total).index_add_(0, index, value)
    missing = torch.ones(total, dtype=torch.bool).index_fill_(0, index, False)
    out = element.combine(raw.unsqueeze(1), 1).masked_fill_(missing, float("nan"))
    return out.view(len(members), size)


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
@pytest.mark.parametrize("criterion", [ElementNorm("l1"), ElementNorm("l2"),
                                       ElementNorm("random"), BNScale()],
                         ids=["l1", "l2", "random", "bn_scale"])
def test_batched_scores_equal_group_by_group(entry: ZooEntry,
                                             criterion: ElementNorm | BNScale) -> None:
    inputs = _inputs(entry)
    batched = criterion.batch_scores(inputs, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    if isinstance(criterion, ElementNorm):
        single = [_reference(criterion, g, m, generator) for g, m in inputs]
    else:
        single = []
        for g, m in inputs:
            scales = _reference(ElementNorm("l1", kinds=("scale",)), g, m, generator)
            bare = bool(torch.isnan(scales).all())
            single.append(_reference(ElementNorm("l2"), g, m, generator) if bare else scales)
    assert len(batched) == len(single)
    for got, want in zip(batched, single, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def _views() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    special = torch.tensor([[0.0], [-0.0], [float("inf")], [-float("inf")], [float("nan")],
                            [1e-30], [-3.5], [1e30]])
    return [
        torch.randn(8, 9, generator=generator),
        special,
        torch.randn(5, 1, generator=generator),
        torch.randn(6, 1, generator=generator, dtype=torch.float64),  # not batched
        torch.randn(3, 1, generator=generator).half(),  # not batched
        torch.randn(4, 1, generator=generator, requires_grad=True),
        torch.randn(7, 4, generator=generator),
        torch.zeros(0, 1),
        torch.randn(2, 1, generator=generator),
        torch.randn(16, 1, generator=generator).t().reshape(16, 1),
    ]


@pytest.mark.parametrize("name", ["l1", "l2", "random", "normalized"])
def test_row_sums_of_narrow_views_together_equal_one_by_one(name: str) -> None:
    element, views = get_criterion(name), _views()
    got = _all_row_sums(element, views, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    want = [_row_sums(element, view, generator) for view in views]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)
    assert [bool(torch.signbit(v).any()) for v in got] == [bool(torch.signbit(v).any())
                                                            for v in want]


def test_only_elementwise_criteria_batch() -> None:
    for name in ("l1", "l2"):
        element = get_criterion(name)
        assert isinstance(element, ElementwiseCriterion) and element.elementwise
        assert is_elementwise(element)
    for name in ("random", "normalized"):  # draws per tensor / divides by its total
        assert not isinstance(get_criterion(name), ElementwiseCriterion)
        assert not is_elementwise(get_criterion(name))


def _counting_l2(flag: bool) -> Any:
    """L2 under a criterion class that counts its ``score`` calls (``.calls``)."""
    l2 = get_criterion("l2")

    class Counting:
        name, needs_data, elementwise = "l2", False, flag
        calls = 0

        def score(self, weight: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
            Counting.calls += 1
            return l2.score(weight, generator=generator)

        def combine(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
            return l2.combine(scores, dim)

    return Counting()


def test_elementwise_false_opts_out() -> None:
    opted_out = _counting_l2(False)
    assert isinstance(opted_out, ElementwiseCriterion) and not is_elementwise(opted_out)
    views = _views()
    _all_row_sums(opted_out, views, torch.Generator())
    assert opted_out.calls == len(views)  # one call a view: nothing batched


def test_narrow_views_are_scored_in_one_call() -> None:
    counting = _counting_l2(True)
    views = _views()
    _all_row_sums(counting, views, torch.Generator())
    # six one-column float32 CPU views in one call; two wide, one float64, one half apart
    assert counting.calls == 1 + 4


@pytest.mark.parametrize("name", ["l1", "l2"])
def test_a_big_weight_is_scored_in_row_blocks_with_the_same_sums(name: str) -> None:
    element = get_criterion(name)
    generator = torch.Generator().manual_seed(0)
    # a conv3d weight viewed by input channel: rows of a permuted, non-contiguous tensor
    weight = torch.randn(256, 128, 3, 3, 3, generator=generator)  # 884,736 elements
    view = torch.cat([weight, weight]).transpose(0, 1).flatten(1)  # 128 rows, not contiguous
    big = torch.randn(300, 5000, generator=generator)
    for tensor in (view, big, big.t()):  # the last one's rows are strided: one block
        assert tensor.numel() > 2**20
        want = element.score(tensor, generator=generator).sum(1)
        got = _row_sums(element, tensor, generator)
        assert got.shape == (tensor.shape[0],)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    counting = _counting_l2(True)
    _row_sums(counting, big, generator)
    assert counting.calls == 2  # 300 rows of 5000: blocks of 209 rows
    _row_sums(counting, big.t(), generator)
    assert counting.calls == 3
