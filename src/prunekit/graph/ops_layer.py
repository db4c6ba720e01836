"""Functional layers: ``F.linear``, ``F.conv1d/2d/3d`` and ``F.embedding`` called by code
with a weight.

When the weight is a parameter of the model (``F.linear(x, self.weight, self.bias)``, a
weight-standardised conv), it is treated like the weight of a Linear/Conv layer: its
output axis makes fresh channels, its input axis reads the input's channels, and both are
cut with their groups (the plan lists the parameter's axes). With a computed weight,
``F.linear`` is a matrix product; a computed conv weight is not supported. ``F.embedding``
(an ``nn.Embedding`` subclass with a forward of its own, such as a scaled word embedding)
makes its weight's columns the output's channels; the indices couple nothing.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from prunekit.graph.labels import consume, emit
from prunekit.graph.ops import OpCall, OpNotMappable, register_op, tensors_in
from prunekit.graph.ops_matmul import contract
from prunekit.graph.ops_pointwise import combine
from prunekit.graph.trace import TraceContext


def _arg(call: OpCall, position: int, name: str) -> Any:
    return call.args[position] if len(call.args) > position else call.kwargs.get(name)


def _functional_layer(ctx: TraceContext, call: OpCall) -> None:
    x, weight, bias = _arg(call, 0, "input"), _arg(call, 1, "weight"), _arg(call, 2, "bias")
    out = tensors_in(call.out)[0]
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise OpNotMappable("input and weight must be tensors")
    linear = call.name == "linear"
    if linear:
        channel_in = channel_out = -1
    else:
        if _arg(call, 6, "groups") not in (None, 1):
            raise OpNotMappable("grouped functional convolutions are not supported")
        channel_in = channel_out = 1 if x.dim() == weight.dim() else 0
    record = ctx.layer_weight(weight)
    if record is None:
        if not linear:
            raise OpNotMappable("its weight is computed, not a parameter of the model")
        labels = contract(ctx, ctx.labels(x), ctx.labels(weight).t(), tuple(out.shape))
    else:
        ctx.weight_axis(record, 1, labels=consume(ctx.space, ctx.labels(x), channel_in))
        ids = ctx.weight_axis(record, 0, count=int(weight.shape[0]))
        labels = emit(ctx.space.find(ids), channel_out, out.shape)
    if isinstance(bias, Tensor):
        view = [1] * out.dim()
        view[channel_out] = bias.numel()
        labels = combine(ctx, [labels, ctx.labels(bias).reshape(view)], out.shape)
    ctx.set_labels(out, labels)


def _embedding(ctx: TraceContext, call: OpCall) -> None:
    ids, weight = _arg(call, 0, "input"), _arg(call, 1, "weight")
    out = tensors_in(call.out)[0]
    if not isinstance(ids, Tensor) or not isinstance(weight, Tensor) or weight.dim() != 2:
        raise OpNotMappable("input and a 2-D weight must be tensors")
    record = ctx.layer_weight(weight)
    if record is None:  # a computed table: output channel d is column d of every row
        columns = consume(ctx.space, ctx.labels(weight), 1)
    else:
        columns = ctx.space.find(ctx.weight_axis(record, 1, count=int(weight.shape[1])))
    ctx.set_vector(out, columns, -1)


register_op(("linear", "conv1d", "conv2d", "conv3d"), _functional_layer)
register_op(("embedding",), _embedding)
