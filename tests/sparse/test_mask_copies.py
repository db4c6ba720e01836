"""Masks on deep copies never reach back into the original model (torch shares the
injected Parametrized<Cls> class between a module and its deepcopy)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunekit.sparse.masks import apply_mask, masked_tensors, strip


def _masked_linear() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4))
    apply_mask(model[0], "weight", torch.rand(4, 4) > 0.5)
    return model


def test_strip_on_a_copy_leaves_the_original_masked() -> None:
    model = _masked_linear()
    x = torch.randn(3, 4)
    expected = model(x)
    clone = copy.deepcopy(model)
    strip(clone)
    assert set(masked_tensors(model)) == {"0.weight"}
    assert torch.equal(model(x), expected)
    assert torch.equal(clone(x), expected)
    assert type(clone[0]) is nn.Linear


def test_masking_a_new_tensor_on_a_copy_leaves_the_original_alone() -> None:
    model = _masked_linear()
    clone = copy.deepcopy(model)
    apply_mask(clone[0], "bias", torch.tensor([True, False, True, True]))
    assert set(masked_tensors(clone)) == {"0.weight", "0.bias"}
    assert set(masked_tensors(model)) == {"0.weight"}
    assert isinstance(model[0].bias, nn.Parameter)
    assert clone[0].bias[1] == 0
