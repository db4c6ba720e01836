"""Fast paths of allocation give exactly what the general paths give."""

from __future__ import annotations

import inspect

import pytest
import torch
from tests.structured.zoo import BY_NAME

import prunekit.allocation.ratio as ratio
from prunekit.allocation.ratio import Allocation, _allocate, _top_mask, allocate, unit_width
from prunekit.graph.dependency import (
    build_groups,
)
from prunekit.graph.trace import trace
from prunekit.structured.adapters import find_adapter
from prunekit.structured.pruning import _axes_of, prune


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


@pytest.mark.parametrize("name", ["vit", "resnext", "gpt"])
def test_allocate_with_given_widths_equals_computed(name: str) -> None:
    entry = BY_NAME[name]
    model = entry.build().eval()
    groups = build_groups(model, trace(model, entry.example_inputs(), find_adapter),
                          axes_of=_axes_of).groups
    generator = torch.Generator().manual_seed(0)
    scores = [torch.rand(g.size, generator=generator) for g in groups]
    widths = [unit_width(g) for g in groups]
    for r in (0.1, 0.4, 0.7):
        config = Allocation(ratio=r, global_ranking=True)
        got = _allocate(groups, scores, config, widths)
        want = allocate(groups, scores, config)
        assert [m.tolist() for m in got] == [m.tolist() for m in want]


def test_allocate_signature_has_no_private_keyword() -> None:
    assert list(inspect.signature(allocate).parameters) == ["groups", "scores", "config"]


def test_target_search_reads_unit_widths_once(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = BY_NAME["vit"]
    calls = []

    def counted(group: object) -> int:
        calls.append(group)
        return unit_width(group)  # type: ignore[arg-type]

    monkeypatch.setattr(ratio, "unit_width", counted)
    monkeypatch.setattr("prunekit.structured.pruning.unit_width", counted)
    result = prune(entry.build(), entry.example_inputs(), target={"params": 0.5})
    assert result.groups > 0
    # once per group for the search's twelve trials, once for the final global allocation
    assert len(calls) == 2 * result.groups
