"""A parameter with no elements used directly in forward: kept as it is where nothing it
could be coupled to can shrink, a clear ConfigError where that is unknown."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import prunekit
from prunekit.errors import ConfigError
from prunekit.structured import analyze


class _EmptyCat(nn.Module):
    """``cat`` of a linear layer's output and an empty parameter along ``dim``."""

    def __init__(self, shape: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.empty = nn.Parameter(torch.zeros(shape))
        self.head = nn.Linear(8, 2)
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        empty = self.empty if self.dim == 0 else self.empty.expand(x.shape[0], -1)
        return self.head(torch.cat([self.a(x), empty], self.dim))


def test_empty_parameter_with_a_wide_axis_is_a_clear_error() -> None:
    torch.manual_seed(0)
    model, x = _EmptyCat((0, 8), dim=0), torch.randn(3, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"'empty' has no elements \(shape \(0, 8\)\).*"
                                          r"axis 1 \(size 8\).*remove it"):
        prunekit.prune(model, x, ratio=0.5)
    with pytest.raises(ConfigError, match="'empty' has no elements"):
        analyze(model, x)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_empty_parameter_with_no_wide_axis_is_kept_and_coverage_says_why() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    result = prunekit.prune(_EmptyCat((1, 0), dim=1), x, ratio=0.5)
    model = result.model
    assert isinstance(model, _EmptyCat)
    assert model.empty.shape == (1, 0)
    assert (model.a.out_features, model.head.in_features) == (4, 4)
    assert model(x).shape == (3, 2)
    (entry,) = [e for e in result.coverage.entries if e.name == "empty"]
    assert entry.status == "fixed" and "no elements" in entry.reason
