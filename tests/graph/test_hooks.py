"""The two hook routes of a trace (the process-wide pair, and hooks of its own for a module
that has forward hooks of the user's) record the same thing; the user's forward hooks on a
layer run traced, after the layer's own output is labelled."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tests.graph.test_trace_fast_paths import _summary
from tests.structured.zoo import BY_NAME
from torch import Tensor, nn

import prunekit as pk
from prunekit.graph.trace import trace
from prunekit.structured.adapters import find_adapter


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2", "vit", "control_flow"])
def test_modules_with_hooks_of_their_own_trace_the_same(name: str) -> None:
    entry = BY_NAME[name]
    model, inputs = entry.build().eval(), entry.example_inputs()
    shared = _summary(trace(model, inputs, find_adapter, strict=False))
    handles = []
    for index, module in enumerate(model.modules()):  # every other one: both routes mixed
        if index % 2:
            handles.append(module.register_forward_pre_hook(lambda mod, args: None))
            handles.append(module.register_forward_hook(lambda mod, args, out: None))
    try:
        own = _summary(trace(model, inputs, find_adapter, strict=False))
    finally:
        for handle in handles:
            handle.remove()
    assert len(handles) > 4 and own == shared


def test_a_failing_layer_with_hooks_of_its_own_raises_its_error_and_nothing_else() -> None:
    """torch calls an always-call hook of a failed forward as it calls a returned one: the
    trace must not record (and fail on) an output that does not exist, which torch would
    report as a second, silenced error."""
    import warnings

    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2))  # the second layer cannot run
    handle = model[1].register_forward_hook(lambda mod, args, out: None)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(RuntimeError, match="cannot be multiplied"):
                trace(model, torch.randn(2, 3), find_adapter)
        assert [str(w.message) for w in caught] == []
        assert torch._C._len_torch_function_stack() == 0  # the recording mode is gone
        model[1] = nn.Linear(4, 2)  # fixed: the same hooks trace it now
        model[1].register_forward_hook(lambda mod, args, out: None)
        traced = trace(model, torch.randn(2, 3), find_adapter)
        assert set(traced.modules) == {"0", "1"}
    finally:
        handle.remove()


class _Hooked(nn.Module):
    """A layer whose output a forward hook of the user's changes: units 3 and 7 knocked out
    (an ablation), or every unit scaled by a parameter (a learned gate)."""

    def __init__(self, hook: str) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(12, 32), nn.Linear(32, 16), nn.Linear(16, 3)
        self.gate = nn.Parameter(torch.rand(32) + 0.5)
        self.a.register_forward_hook(self._ablate if hook == "ablate" else self._scale)

    def _ablate(self, module: nn.Module, args: Any, out: Tensor) -> Tensor:
        out = out.clone()
        out[:, [3, 7]] = 0
        return out

    def _scale(self, module: nn.Module, args: Any, out: Tensor) -> Tensor:
        return out * self.gate

    def forward(self, x: Tensor) -> Tensor:
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


def test_a_forward_hook_that_knocks_out_fixed_units_keeps_them_in_place() -> None:
    # the hook ran unseen inside the layer: a's units were renumbered under it and the
    # pruned model knocked out two other units, silently
    torch.manual_seed(0)
    model, x = _Hooked("ablate").eval(), torch.randn(4, 12)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.a.out_features == 32 and result.model.b.out_features == 8
    assert "fixed part" in result.coverage.fixed["a.weight"]
    _assert_as_zeroed(model, result, x)


def test_a_forward_hook_that_scales_by_a_parameter_cuts_it_with_the_layer() -> None:
    # before: PruneValidationError (the gate kept 32 entries), and the coverage said the
    # gate was "not read by the forward pass"
    torch.manual_seed(0)
    model, x = _Hooked("scale").eval(), torch.randn(4, 12)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.a.out_features == 16 and result.model.gate.shape == (16,)
    _assert_as_zeroed(model, result, x)


def _assert_as_zeroed(model: nn.Module, result: pk.PruneResult, x: Tensor) -> None:
    """The pruned model computes what ``model`` does with the removed inputs of each layer
    zeroed (the hooks travel with the copy)."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for path, entry in result.plan["modules"].items():
            if "in" in entry["keep"]:
                weight = reference.get_submodule(path).weight
                weight[:, sorted(set(range(weight.shape[1])) - set(entry["keep"]["in"]))] = 0
        for other in (x, torch.randn(7, 12)):
            torch.testing.assert_close(result.model(other), reference(other))
