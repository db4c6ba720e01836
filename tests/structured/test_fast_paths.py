"""Fast paths of the post-trace phases give exactly what the general paths give."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests.structured.zoo import ZOO, ZooEntry
from torch import nn
from torch.nn.utils import parametrize

from prunekit.allocation.ratio import _top_mask
from prunekit.graph.dependency import (
    Group,
    _param_axis,
    _param_member,
    _unique_first,
    build_groups,
)
from prunekit.graph.labels import LabelSpace, positions_in
from prunekit.graph.trace import ParamRecord, Trace, trace
from prunekit.importance.base import get_criterion
from prunekit.importance.group import BNScale, ElementNorm, MemberViews
from prunekit.structured.adapters import find_adapter, grad_rows, rows
from prunekit.structured.adapters_conv import _grouped_rows
from prunekit.structured.plan import is_parametrized
from prunekit.structured.pruning import _axes_of, _member_views, prune


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_mask_numpy_equals_torch_sort(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    cases = [torch.randn(50, generator=generator), torch.zeros(7),
             torch.tensor([1.0, -0.0, 0.0, 1.0, float("inf"), -float("inf"), 2.0, 0.0]),
             torch.randint(0, 3, (40,), generator=generator).float(), torch.zeros(0)]
    for score in cases:
        score = score.to(dtype)
        for keep in range(score.numel() + 1):
            want = torch.zeros(score.numel(), dtype=torch.bool)
            want[torch.argsort(score, descending=True, stable=True)[:keep]] = True
            assert torch.equal(_top_mask(score, score.numel(), keep), want)


def test_unique_first_equals_numpy_unique() -> None:
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 100, 1000):
        for high in (1, 3, 50, 10_000):
            values = rng.integers(0, high, size, dtype=np.int64)
            want = np.unique(values, return_index=True, return_inverse=True)
            for got, expected in zip(_unique_first(values), want, strict=True):
                assert np.array_equal(got, expected.reshape(-1))


@pytest.mark.parametrize("transposed", [False, True])
def test_conv_rows_of_one_group_equal_the_grouped_path(transposed: bool) -> None:
    conv = (nn.ConvTranspose2d(6, 4, 3) if transposed else nn.Conv2d(6, 4, 3))
    weight = conv.weight.detach()
    first, second = weight.shape[0], weight.shape[1]
    general = weight.reshape(1, first, second, -1).transpose(1, 2).reshape(second, -1)
    dim = "out" if transposed else "in"  # the dim on the weight's second axis
    assert torch.equal(_grouped_rows(conv, weight, dim), general)


def test_rows_of_axis_zero_equal_movedim_path() -> None:
    tensor = torch.randn(3, 4, 5, requires_grad=True)
    tensor.grad = torch.randn(3, 4, 5)
    for axis in range(3):
        want = tensor.detach().movedim(axis, 0).reshape(tensor.shape[axis], -1)
        assert torch.equal(rows(tensor, axis), want)
        grad = grad_rows(tensor, axis)
        assert grad is not None
        assert torch.equal(grad, tensor.grad.movedim(axis, 0).reshape(tensor.shape[axis], -1))


def test_is_parametrized_equals_torch() -> None:
    masked = nn.Linear(3, 4)
    parametrize.register_parametrization(masked, "weight", _Identity())
    emptied = nn.Linear(3, 4)
    parametrize.register_parametrization(emptied, "weight", _Identity())
    parametrize.remove_parametrizations(emptied, "weight")
    modules = [masked, emptied, nn.Linear(3, 4), nn.Sequential(masked)]
    modules += [m for e in ZOO for m in e.build().modules()]
    for module in modules:
        assert is_parametrized(module) == parametrize.is_parametrized(module)


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("training", [False, True])
def test_validation_forward_runs_in_eval_mode_either_way(training: bool) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model.train(training)
    with torch.no_grad():
        model[1].running_mean.uniform_()
    stats = model[1].running_mean.clone()
    result = prune(model, torch.randn(2, 3, 8, 8), ratio=0.5, inplace=True)
    assert result.model is model and all(m.training == training for m in model.modules())
    kept = result.plan["modules"]["1"]["keep"]["channels"]
    torch.testing.assert_close(model[1].running_mean, stats[kept], rtol=0, atol=0)


def _reference_axis(units: torch.Tensor, read: torch.Tensor) -> int | None:
    """The torch computation _param_axis did before it moved to NumPy (axis test only)."""
    for axis in range(units.dim()):
        if units.shape[axis] <= 1:
            continue
        flat = units.movedim(axis, 0).reshape(units.shape[axis], -1)
        seen = read.movedim(axis, 0).reshape(units.shape[axis], -1)
        first = torch.where(seen, flat, torch.full_like(flat, -1)).amax(1, keepdim=True)
        if bool(((flat == first) | ~seen).all()):
            return axis
    return None


def _reference_member_units(units: torch.Tensor, read: torch.Tensor, axis: int) -> torch.Tensor:
    flat = units.movedim(axis, 0).reshape(units.shape[axis], -1)
    seen = read.movedim(axis, 0).reshape(units.shape[axis], -1)
    per_index = torch.where(seen, flat, torch.zeros_like(flat)).amax(1)
    return torch.where(seen.any(1), per_index, flat[:, 0])


def test_param_axis_numpy_equals_torch() -> None:
    generator = torch.Generator().manual_seed(0)
    space = LabelSpace()
    checked, blocked = 0, 0
    layouts = [(shape, along) for shape in [(1, 5, 8), (4, 6), (3, 1, 2), (7,), (2, 3, 4)]
               for along in (None, *range(len(shape)))]
    for shape, along in layouts:
        ids = space.new_ids(math.prod(shape)).reshape(shape)
        if along is not None:  # join all elements of each index along ``along``
            others = tuple(d for d in range(len(shape)) if d != along)
            if others:
                space.union(ids, ids.amax(dim=others, keepdim=True).expand(shape))
        for selected in (None, torch.rand(shape, generator=generator) > 0.3,
                         torch.zeros(shape, dtype=torch.bool)):
            param = ParamRecord("p", torch.zeros(shape), ids, selected=selected)
            units = space.find(ids)
            read = selected if selected is not None else torch.ones(shape, dtype=torch.bool)
            want = _reference_axis(units, read)
            trace = Trace(space, {}, {"p": param}, [])
            assert _param_axis(trace, param) == want
            blocked += want is None
            if want is not None:
                got = _param_member(trace, param, want).units
                assert torch.equal(got, _reference_member_units(units, read, want))
                checked += 1
    assert checked > 0 and blocked > 0
