"""Fast paths of scoring and surgery (second batch) give exactly what the general paths give."""

from __future__ import annotations

import pytest
import torch

from prunekit.importance.base import ElementwiseCriterion, get_criterion, is_elementwise
from prunekit.importance.group import _all_row_sums, _row_sums


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


def test_elementwise_false_opts_out() -> None:
    l2 = get_criterion("l2")

    class OptedOut:
        name, needs_data, elementwise = "l2", False, False

        def score(self, weight: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
            return l2.score(weight, generator=generator)

        def combine(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
            return l2.combine(scores, dim)

    assert isinstance(OptedOut(), ElementwiseCriterion) and not is_elementwise(OptedOut())


def test_narrow_views_are_scored_in_one_call() -> None:
    l2 = get_criterion("l2")

    class Counting:
        name, needs_data, elementwise = "l2", False, True
        calls = 0

        def score(self, weight: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
            Counting.calls += 1
            return l2.score(weight, generator=generator)

        def combine(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
            return l2.combine(scores, dim)

    views = _views()
    _all_row_sums(Counting(), views, torch.Generator())  # type: ignore[arg-type]
    # six one-column float32 CPU views in one call; two wide, one float64, one half apart
    assert Counting.calls == 1 + 4


def test_update_attr_sets_what_setattr_sets() -> None:
    from torch import nn

    from prunekit.structured.adapters import update_attr

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
