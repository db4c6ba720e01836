"""Scoring does not depend on the default dtype: PINN code sets
``torch.set_default_dtype(torch.float64)``, and every prune then failed in ``index_add_``
("self (Double) and source (Float)"), found by the scientific-ML probe."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import prunekit as pk


@pytest.fixture
def float64_default() -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("options", [
    {"importance": "l2"}, {"importance": "fpgm"}, {"global_ranking": True},
    {"aggregation": "max", "normalization": "standard", "global_ranking": True},
    {"target": {"params": 0.6}},
])
def test_prune_with_a_float64_default_dtype(float64_default: None, options: dict) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 1))
    x = torch.rand(8, 2)
    assert x.dtype == torch.float64
    result = pk.prune(model, x, **({"ratio": 0.5} | options if "target" not in options
                                   else options))
    assert result.model[0].weight.dtype == torch.float64
    assert result.params_kept < 0.7
    assert result.model(x).shape == (8, 1)
