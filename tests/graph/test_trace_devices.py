"""The trace reads shapes, not activation values or devices: labels live on the CPU.

A model on the ``meta`` device (tensors with shapes and no data) must trace exactly as on the
CPU; a handler that mixed label tensors with activations, or read an activation's values,
fails here without a GPU. Index tensors that ops take from the model's own arguments (a
relative-position table, ``x[:, idx]``) are moved to the CPU before labels are indexed
(``graph.ops.on_cpu``): the one place the trace must read values, so the one model that
uses them (swin) is checked on CUDA only (tests/structured/test_cuda.py).
"""

from __future__ import annotations

import pytest
import torch
from tests.graph.test_trace_fast_paths import _summary
from tests.structured.zoo import ZOO, ZooEntry

from prunekit._inputs import move_inputs
from prunekit.graph.ops import on_cpu
from prunekit.graph.trace import trace
from prunekit.structured.adapters import find_adapter

_READS_INDEX_VALUES = {"swin"}  # indexes its bias table with a buffer of positions


@pytest.mark.parametrize("entry", [e for e in ZOO if e.name not in _READS_INDEX_VALUES],
                         ids=lambda e: e.name)
def test_meta_model_traces_like_cpu(entry: ZooEntry) -> None:
    model, x = entry.build().eval(), entry.example_inputs()
    on_cpu_trace = _summary(trace(model, x, find_adapter))
    meta = model.to("meta")
    assert _summary(trace(meta, move_inputs(x, "meta"), find_adapter)) == on_cpu_trace


class _Elsewhere(torch.Tensor):
    """A tensor that says it is not on the CPU (a stand-in for a CUDA index tensor)."""

    is_cpu = False

    def cpu(self) -> torch.Tensor:  # type: ignore[override]
        return self.as_subclass(torch.Tensor).clone()


def test_on_cpu_moves_nested_tensors_and_keeps_the_rest() -> None:
    index = torch.tensor([2, 0])
    tree = (slice(None), index, [3, index], {"dim": 1})
    assert on_cpu(tree) is tree  # nothing to move: the same object, no copy
    remote = index.as_subclass(_Elsewhere)
    moved = on_cpu((slice(None), [3, remote], {"index": remote, "dim": 1}))
    assert type(moved) is tuple and moved[0] == slice(None)
    assert type(moved[1]) is list and moved[1][0] == 3
    for tensor in (moved[1][1], moved[2]["index"]):
        assert type(tensor) is torch.Tensor and torch.equal(tensor, index)
    assert moved[2]["dim"] == 1
