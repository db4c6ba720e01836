"""Fast paths of layer adapters (row views, slicing, attribute updates) give exactly what
the general paths give."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.structured.adapters import ParamSlicer, grad_rows, rows, update_attr
from prunekit.structured.adapters_conv import _grouped_rows


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


@pytest.mark.parametrize("grad_mode", [True, False])
def test_slice_without_grad_mode_equals_detached_slice(grad_mode: bool) -> None:
    conv = nn.Conv2d(4, 8, 3)
    weight = conv.weight
    index = torch.tensor([0, 2, 5])
    slicer = ParamSlicer()
    with torch.set_grad_enabled(grad_mode):
        slicer.slice(conv, "weight", 0, index)
        slicer.slice(conv, "weight", 1, torch.tensor([1, 3]))
    slicer.finish()
    expected = weight.detach().index_select(0, index).index_select(1, torch.tensor([1, 3]))
    assert type(conv.weight) is nn.Parameter and conv.weight.requires_grad
    assert conv.weight.grad_fn is None and conv.weight.is_leaf
    assert torch.equal(conv.weight, expected)


def test_update_attr_sets_what_setattr_sets() -> None:
    for old, new in [(4, 4), (4, 3), (True, 1), (1, True), (4, 4.0), ((4,), (4,)), ((4,), [4])]:
        fast, general = nn.Linear(2, 2), nn.Linear(2, 2)
        fast.size = general.size = old  # type: ignore[assignment]
        update_attr(fast, "size", new)
        general.size = new  # type: ignore[assignment]
        assert type(fast.size) is type(general.size) and fast.size == general.size
    layer = nn.Linear(2, 2)
    update_attr(layer, "fresh", 3)  # not there yet: set
    assert layer.fresh == 3
    calls = []

    class Recording(nn.Linear):
        def __setattr__(self, name: str, value: object) -> None:
            calls.append(name)
            super().__setattr__(name, value)

    skipped = Recording(2, 3)
    calls.clear()
    update_attr(skipped, "out_features", 3)
    update_attr(skipped, "in_features", 5)
    assert calls == ["in_features"] and skipped.in_features == 5
