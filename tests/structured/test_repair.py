"""A group whose cut breaks the forward check in a way the trace cannot see is found by
bisection: named in the error (strict) or kept whole while the rest is pruned (strict=False)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import PruneValidationError
from prunekit.structured.repair import breaking_groups


@pytest.mark.parametrize(("bad", "size"), [((), 9), ((4,), 9), ((0, 8), 9), ((2, 3, 5), 16)])
def test_breaking_groups_finds_each_bad_group(bad: tuple[int, ...], size: int) -> None:
    calls: list[list[int]] = []

    def passes(cut: list[int]) -> bool:
        calls.append(cut)
        return not set(cut) & set(bad)

    assert breaking_groups(range(size), passes) == list(bad)
    assert len(calls) <= 1 + len(bad) * (1 + size.bit_length())


def test_a_group_failing_only_with_another_is_found_after_it() -> None:
    def passes(cut: list[int]) -> bool:  # 2 and 5 together break it
        return not {2, 5} <= set(cut)

    assert breaking_groups(range(8), passes) == [5]


class _Scale(nn.Module):
    """poolformer's layer scale, with the view's shape copied into a new list: the copy is
    not the attribute (which would be rewritten), so nothing rewrites the width it holds
    when the channels shrink."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shape = (dim, 1, 1)
        self.scale = nn.Parameter(torch.ones(dim) * 0.5)

    def forward(self, x: Tensor) -> Tensor:
        shape = list(self.shape)  # (read in the call, the tuple's width is kept whole)
        return x * self.scale.view(shape)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.scale, self.b = nn.Conv2d(3, 8, 3), _Scale(8), nn.Conv2d(8, 16, 3)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.c(torch.relu(self.b(self.scale(torch.relu(self.a(x))))))


def test_breaking_group_is_named_or_kept_whole() -> None:
    model, x = _Net().eval(), torch.randn(2, 3, 10, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruneValidationError, match=r"Cutting group \d+ \(8 units; a\.out.*"
                                                   r"pass strict=False"):
        pk.prune(model, x, ratio=0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.warns(UserWarning, match=r"kept whole: group \d+ \(8 units; a\.out"):
        result = pk.prune(model, x, ratio=0.5, strict=False)
    pruned = result.model
    assert pruned.a.out_channels == 8 and pruned.scale.scale.shape == (8,)  # kept whole
    assert pruned.b.out_channels == 8 and pruned.c.in_channels == 8  # the rest is pruned
    assert result.groups == 1
    assert "broke the pruned model's forward check" in result.coverage.fixed["a.weight"]
    with torch.no_grad():
        assert pruned(x).shape == (2, 4, 6, 6)


def test_strict_false_without_a_breaking_group_warns_nothing() -> None:
    model, x = _Net().eval(), torch.randn(2, 3, 10, 10)
    model.scale = nn.Identity()  # type: ignore[assignment]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pk.prune(model, x, ratio=0.5, strict=False)
    assert result.groups == 2 and result.model.a.out_channels == 4


class _AssertedShuffle(nn.Module):
    """megvii ShuffleNetV2's channel shuffle asserts ``num_channels % 4 == 0``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.a(x)
        assert y.shape[1] % 4 == 0
        return self.b(y)


def test_a_failing_assert_of_the_model_is_named() -> None:
    # the hint listed shapes read from tensors, tuple attributes, caches... (AssertionError
    # with no message said nothing of where)
    model, x = _AssertedShuffle().eval(), torch.randn(1, 3, 4, 4)
    with pytest.raises(PruneValidationError,
                       match=r"an assert of the model's code fails on the widths left "
                             r"\(test_repair\.py:\d+: assert y\.shape\[1\] % 4 == 0\)"):
        pk.prune(model, x, ratio=0.2)  # 13 channels left
    assert pk.prune(model, x, ratio=0.3, round_to=4).model.a.out_channels == 12
    with pytest.warns(UserWarning, match="an assert of the model's code, test_repair.py"):
        assert pk.prune(model, x, ratio=0.2, strict=False).model.a.out_channels == 16
