"""The two hook routes of a trace (the process-wide pair, and hooks of its own for a module
that has forward hooks of the user's) record the same thing."""

from __future__ import annotations

import pytest
from tests.graph.test_trace_fast_paths import _summary
from tests.structured.zoo import BY_NAME

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
