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
