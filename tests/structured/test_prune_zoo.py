"""Every zoo architecture prunes at 30 % and 50 %: it runs, keeps its output shapes, loses
at least the expected share of parameters, replays from its plan, and is unchanged at 0 %."""

from __future__ import annotations

import json

import pytest
import torch
from tests.structured.zoo import ZOO, ZooEntry, call, output_tensors

from prunekit.structured import prune, replay_plan


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_zoo_prunes(entry: ZooEntry, ratio: float) -> None:
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=ratio)
    with torch.no_grad():
        before = output_tensors(call(model, inputs))
        after = output_tensors(call(result.model, inputs))
    assert [t.shape for t in after] == [t.shape for t in before]
    # every zoo model's bulk is in prunable groups, each losing `ratio` of its width
    assert result.params_kept <= 1 - 0.5 * ratio, result.coverage
    fresh = entry.build().eval()
    replay_plan(fresh, json.loads(json.dumps(result.plan)))
    fresh.load_state_dict(result.model.state_dict())
    with torch.no_grad():
        for got, want in zip(output_tensors(call(fresh, inputs)), after, strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
def test_zoo_ratio_zero_is_identity(entry: ZooEntry) -> None:
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.0)
    assert result.plan["modules"] == {} and result.plan["params"] == {}
    with torch.no_grad():
        got_all = output_tensors(call(result.model, inputs))
        for got, want in zip(got_all, output_tensors(call(model, inputs)), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
