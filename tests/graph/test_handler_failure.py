"""A handler that fails on a call it does not expect is a refusal naming the op and where it
was reached (or, with ``strict=False``, its tensors kept whole), never a crash mid-trace."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import UnsupportedOpError
from prunekit.graph.ops import OpCall, get_op_handler, register_op
from prunekit.graph.trace import TraceContext
from prunekit.structured.adapters import register_adapter


def _broken_op(ctx: TraceContext, call: OpCall) -> None:
    raise ValueError("not enough values to unpack")


class _Gate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 2.0


class _BrokenLayer:
    def trace(self, ctx: TraceContext, call: object) -> None:
        raise IndexError("index 3 is out of bounds")


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.gate, self.b = nn.Conv2d(3, 8, 3), _Gate(), nn.Conv2d(8, 8, 3)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.c(torch.sigmoid(self.b(self.gate(self.a(x)))))


@pytest.fixture
def broken_sigmoid() -> Iterator[None]:
    original = get_op_handler("sigmoid")
    assert original is not None
    register_op(["sigmoid"], _broken_op, replace=True)
    try:
        yield
    finally:
        register_op(["sigmoid"], original, replace=True)


def test_failing_op_handler_is_a_named_refusal(broken_sigmoid: None) -> None:
    model, x = _Net().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(UnsupportedOpError,
                       match=r"handler for op .*sigmoid failed \(ValueError: not enough"):
        pk.prune(model, x, ratio=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = pk.prune(model, x, ratio=0.5, strict=False).model
    assert pruned.b.out_channels == pruned.c.in_channels == 8  # around it: whole
    assert pruned.a.out_channels == pruned.b.in_channels == 4  # before it: pruned


def test_failing_layer_handler_is_a_named_refusal() -> None:
    register_adapter(_Gate, _BrokenLayer())  # type: ignore[arg-type]
    try:
        with pytest.raises(UnsupportedOpError,
                           match=r"handler for layer _Gate failed \(IndexError.*module 'gate'"):
            pk.prune(_Net().eval(), torch.randn(1, 3, 8, 8), ratio=0.5)
    finally:
        from prunekit.structured import adapters

        del adapters._ADAPTERS[_Gate], adapters._SUBCLASS_OK[_Gate]
