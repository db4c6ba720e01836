"""The fix every unknown-op error prints, ``prunekit.graph.register_op('name', handler)``,
works as printed: a bare string is one op name. Before, the string was read character by
character (ops '.', '_', 'a', ... registered, then "op 't' already has a handler")."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.errors import ConfigError, UnsupportedOpError
from prunekit.graph import register_op
from prunekit.graph.ops import _HANDLERS, get_op_handler
from prunekit.structured import prune


@torch.library.custom_op("prunekit_test::scaled_gelu", mutates_args=())
def scaled_gelu(x: Tensor, scale: float) -> Tensor:
    return F.gelu(x) * scale


@scaled_gelu.register_fake
def _(x: Tensor, scale: float) -> Tensor:
    return torch.empty_like(x)


class CustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(scaled_gelu(self.a(x), 2.0))


def _elementwise(ctx, call) -> None:  # type: ignore[no-untyped-def]
    ctx.set_labels(call.out, ctx.labels(call.args[0]))


@pytest.fixture
def handlers() -> Iterator[None]:
    get_op_handler("add")  # the built-in handlers loaded before the snapshot
    before = dict(_HANDLERS)
    yield
    _HANDLERS.clear()
    _HANDLERS.update(before)


@pytest.mark.usefixtures("handlers")
def test_the_printed_fix_registers_the_op() -> None:
    model, x = CustomOp().eval(), torch.randn(3, 16)
    with pytest.raises(UnsupportedOpError, match=r"register_op\('[^']+', handler\)") as err:
        prune(model, x, ratio=0.5)
    name = re.search(r"register_op\('([^']+)'", str(err.value)).group(1)  # type: ignore[union-attr]
    before = set(_HANDLERS)
    register_op(name, _elementwise)  # exactly as printed
    assert set(_HANDLERS) - before == {name}
    result = prune(model, x, ratio=0.5)
    assert result.model.a.out_features == 16


@pytest.mark.usefixtures("handlers")
def test_a_refused_name_registers_nothing() -> None:
    before = dict(_HANDLERS)
    with pytest.raises(ConfigError, match="'add' already has a handler"):
        register_op(["prunekit_test_new_op", "add"], _elementwise)
    assert before == _HANDLERS
