"""Functional layers: ``F.linear``, ``F.conv1d/2d/3d``, ``F.conv_transpose1d/2d/3d``,
``F.bilinear``, ``F.prelu``, ``F.embedding`` and ``F.embedding_bag`` called by code with a
weight.

When the weight is a parameter or buffer of the model (``F.linear(x, self.weight,
self.bias)``, a blur filter ``F.conv2d(x, self.filt, groups=C)``, one expert's weights
``self.gate_up_proj[e]`` of a 3-D stack), it is treated like the weight of a Linear/Conv
layer: its output axis makes fresh channels, its input axis reads
the input's channels, and both are cut with their groups (the plan lists the parameter's
axes); a grouped or depthwise conv couples them as ``nn.Conv2d``'s adapter does. With a
computed weight, ``F.linear`` is a matrix product; a computed conv or bilinear weight is not
supported. ``F.bilinear``'s weight ``[out, in1, in2]`` makes fresh channels on axis 0 and
reads the two inputs' last dims on axes 1 and 2.
``F.embedding`` (an ``nn.Embedding`` subclass with a forward of its own, such as a scaled
word embedding) and ``F.embedding_bag`` make their weight's columns the output's channels;
the indices and offsets couple nothing, and per-sample weights, which pair with the indices
one for one, keep their shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor, nn

from prunekit.graph.callers import literals_written
from prunekit.graph.labels import consume, emit, fixed_shape, rep_along
from prunekit.graph.ops import OpCall, OpNotMappable, register_op, tensors_in
from prunekit.graph.ops_matmul import contract, matmul, weight_axes
from prunekit.graph.ops_pointwise import combine
from prunekit.graph.ops_shape import holding, ones_after, running_module_phrase
from prunekit.graph.sizes import SizeInt
from prunekit.graph.trace import ParamRecord, TraceContext


def _functional_layer(ctx: TraceContext, call: OpCall) -> None:
    x, weight, bias = call.arg(0, "input"), call.arg(1, "weight"), call.arg(2, "bias")
    out = tensors_in(call.out)[0]
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise OpNotMappable("input and weight must be tensors")
    linear = call.name == "linear"
    flipped = ctx.param_views.weight(weight, "t") if linear else None
    if linear and (weight.dim() == 1 or flipped is not None):
        # x @ w with a vector (GFL's ``F.linear(x, project)``), or x @ W of a tied decoder's
        # ``F.linear(h, self.enc.weight.t())``: W's rows read x, its columns are the output
        matmul(ctx, dataclasses.replace(call, args=(x, weight if flipped is None else flipped),
                                        kwargs={}))
        if isinstance(bias, Tensor):
            ctx.set_labels(out, combine(ctx, [ctx.labels(out), ctx.labels(bias)], out.shape))
        return
    transposed = call.name.startswith("conv_transpose")
    groups = 1 if linear else call.arg(6, "groups")
    groups = 1 if groups is None else groups
    if linear:
        channel_in = channel_out = -1
    else:
        channel_in = channel_out = 1 if x.dim() == weight.dim() else 0
    same = ctx.same_as_param(weight)  # W.squeeze(1).unsqueeze(1), W.float(): W itself
    if same is not None and (same.shape == weight.shape or (groups == 1 and not linear and
                             ones_after(same, weight))):
        weight = same  # (W.view(c, c, 1, 1) of a 2-D W: its axes 0 and 1 are the conv's)
    # F.linear(x, self.gate_up_proj[e]) reads rows of axis 1 and columns of axis 2 of a stack
    stack = ctx.param_views.weight(weight, "pick") if linear and weight.dim() == 2 else None
    record = ctx.layer_weight(weight if stack is None else stack)
    first = 0 if stack is None else 1  # the weight's axis 0 in the parameter
    if record is None:
        if not linear:
            raise OpNotMappable(_not_the_models(ctx, weight), makes_channels=True)
        labels = contract(ctx, ctx.labels(x), ctx.labels(weight).t(), tuple(out.shape))
    elif transposed:  # weight [in, out / groups, *k]: a tied decoder's F.conv_transpose2d
        if groups != 1:
            raise OpNotMappable(f"groups={groups!r}: only ungrouped transposed convs with a "
                                f"parameter weight are mapped", makes_channels=True)
        made = weight_axes(ctx, record, 0, 1, consume(ctx.space, ctx.labels(x), channel_in))
        labels = emit(made, channel_out, out.shape)
    elif groups == 1:
        made = weight_axes(ctx, record, first + 1, first,
                           consume(ctx.space, ctx.labels(x), channel_in),
                           experts=stack is not None)
        labels = emit(made, channel_out, out.shape)
    else:
        ids = _grouped_conv(ctx, call, x, weight, record, groups, channel_in)
        labels = emit(ctx.space.find(ids), channel_out, out.shape)
    ctx.set_labels(out, _with_bias(ctx, labels, bias, out, channel_out))


def _not_the_models(ctx: TraceContext, weight: Tensor) -> str:
    """Why a layer's weight is no parameter of the model: a parameter of a layer the model
    does not register (held in a plain dict or list), a tensor computed from the model's
    parameters or buffers, or one computed from its inputs (a hypernetwork's)."""
    if isinstance(weight, nn.Parameter):
        return ("its weight is a parameter that the model does not register (a layer held in "
                "a plain dict, list or tuple); hold it in nn.ModuleDict or nn.ModuleList to "
                "prune it")
    if not ctx.is_param_built(weight):
        return ("its weight is computed from the model's inputs or another layer's output (a "
                "hypernetwork, dynamic kernels as SOLOv2's or CondConv's), not a parameter "
                "whose channels can be cut; pass strict=False to keep the channels it meets "
                "whole and prune the rest")
    return ("its weight is computed in forward from parameters or buffers, not a parameter "
            "of the model (a weight standardised or scaled in forward: if it is computed "
            "from the layer's own weight element by element per output channel, as BiT's "
            "StdConv2d is, give the class an adapter: "
            "prunekit.structured.register_adapter(MyStdConv, "
            "prunekit.structured.adapters_timm.StdConvAdapter()); a fixed kernel made from "
            "a buffer, a Sobel filter's transpose: pass strict=False to keep the channels it "
            "meets whole and prune the rest)")


def _with_bias(ctx: TraceContext, labels: Tensor, bias: Any, out: Tensor,
               channel_out: int) -> Tensor:
    """``labels`` joined with a bias added along ``channel_out`` (none: ``labels``)."""
    if not isinstance(bias, Tensor):
        return labels
    view = [1] * out.dim()
    view[channel_out] = bias.numel()
    return combine(ctx, [labels, ctx.labels(bias).reshape(view)], out.shape)


def _bilinear(ctx: TraceContext, call: OpCall) -> None:
    """``y[..., o] = Σ_ij x1[..., i] W[o, i, j] x2[..., j] + b[o]``, ``W`` a parameter or
    buffer: axis 0 makes the output's channels, axes 1 and 2 read the inputs' last dims
    (one channel set on both when ``x1`` and ``x2`` carry the same channels)."""
    x1, x2 = call.arg(0, "input1"), call.arg(1, "input2")
    weight, bias = call.arg(2, "weight"), call.arg(3, "bias")
    out = tensors_in(call.out)[0]
    if not all(isinstance(t, Tensor) for t in (x1, x2, weight)) or weight.dim() != 3:
        raise OpNotMappable("input1, input2 and a 3-D weight must be tensors")
    same = ctx.same_as_param(weight)
    if same is not None and same.shape == weight.shape:
        weight = same
    record = ctx.layer_weight(weight)
    if record is None:
        raise OpNotMappable("its weight is computed, not a parameter of the model; keep it "
                            "in an nn.Bilinear or a parameter to prune its channels",
                            makes_channels=True)
    ctx.weight_axis(record, 1, labels=ctx.consume(x1, -1))
    ctx.weight_axis(record, 2, labels=ctx.consume(x2, -1))
    made = ctx.space.find(ctx.weight_axis(record, 0, count=int(weight.shape[0])))
    ctx.set_labels(out, _with_bias(ctx, emit(made, -1, out.shape), bias, out, -1))


def _grouped_conv(ctx: TraceContext, call: OpCall, x: Tensor, weight: Tensor,
                  record: ParamRecord, groups: Any, channel_in: int) -> Tensor:
    """Labels of the output channels of a grouped functional conv whose weight
    ``[out, in / groups, *k]`` is a parameter or buffer, coupled as ``nn.Conv2d``'s adapter
    couples them (:mod:`prunekit.structured.adapters_conv`).

    Depthwise (one input channel per group, a blur filter or a smoothing kernel held in a
    buffer): output channel ``g·m + i`` reads input channel ``g``, so the weight's rows (and
    the bias) follow the input's channels, whole groups go, and the group count written in
    the call must shrink with them; it does when it is read from the input
    (``groups=x.shape[1]``) or held by one int attribute of the running module
    (``self.channels``: bound and rewritten). Several input channels per group: the group
    count stays and channel ``j`` of every group leaves together, on both sides."""
    cin, cout = x.shape[channel_in], weight.shape[0]
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1 or \
            cin != groups * weight.shape[1] or cout % groups:
        raise OpNotMappable(f"groups={groups!r} does not divide input channels {cin} and "
                            f"weight of shape {tuple(weight.shape)} into groups")
    space = ctx.space
    in_labels = ctx.consume(x, channel_in)
    if weight.shape[1] == 1:  # depthwise: output channel g·m + i follows input channel g
        out_labels = ctx.weight_axis(record, 0, labels=in_labels.repeat_interleave(cout // cin))
        _bind_group_count(ctx, call, groups, in_labels)
        return out_labels
    rep_along(space, in_labels.view(groups, -1), (0,))
    ctx.weight_axis(record, 1, labels=in_labels.view(groups, -1)[0])
    ids = ctx.weight_axis(record, 0, count=int(cout))
    rep_along(space, ids.view(groups, -1), (0,))
    return ids


def _bind_group_count(ctx: TraceContext, call: OpCall, groups: int, channels: Tensor) -> None:
    """A depthwise conv's group count is its input width: where one int attribute of the
    running module holds it, that attribute is rewritten with the channels kept; where
    several do, which one the call reads is unknown, so the channels are kept whole. None:
    the count is read from the input (``x.shape[1]``) and follows by itself. A literal
    (``groups=16``) cannot follow: the channels are kept whole."""
    holders = holding(ctx, groups)
    if not holders and not isinstance(groups, SizeInt) and groups in literals_written(ctx):
        ctx.block(channels, f"{call.display} takes groups={groups}, a literal that pruning "
                            f"cannot change; pass groups=x.shape[1] or keep the count in an "
                            f"int attribute to prune these channels")
        return
    if len(holders) > 1:
        holders = [k for k in holders if "channel" in k or "group" in k] or holders
    if len(holders) == 1:
        ctx.bind_attribute(ctx.path, holders[0], channels)
    elif holders:
        ctx.block(channels, f"{call.display} takes groups={groups}, which several attributes "
                            f"of {running_module_phrase(ctx)} hold ({', '.join(holders)}), "
                            f"so which one to rewrite is unknown; pass groups=x.shape[1] to "
                            f"prune these channels")


def _embedding(ctx: TraceContext, call: OpCall) -> None:
    ids, weight = call.arg(0, "input"), call.arg(1, "weight")
    out = tensors_in(call.out)[0]
    if not isinstance(ids, Tensor) or not isinstance(weight, Tensor) or weight.dim() != 2:
        raise OpNotMappable("input and a 2-D weight must be tensors")
    record = ctx.layer_weight(weight)
    if record is None:  # a computed table: output channel d is column d of every row
        columns = consume(ctx.space, ctx.labels(weight), 1)
    else:
        columns = ctx.space.find(ctx.weight_axis(record, 1, count=int(weight.shape[1])))
    ctx.set_vector(out, columns, -1)
    if call.name == "embedding_bag":  # (input, weight, offsets, ..., per_sample_weights, ...)
        keep_sample_weights(ctx, call.arg(8, "per_sample_weights"))


def keep_sample_weights(ctx: TraceContext, weights: Any) -> None:
    """An embedding bag's per-sample weights pair with its indices one for one, and the
    indices' shape does not change with pruning: channels they carry are kept whole."""
    if isinstance(weights, Tensor):
        ctx.block(ctx.labels(weights), "an embedding bag's per_sample_weights pair with its "
                                       "indices one for one, so their shape is kept")


FUNCTIONAL_ATTENTION = (
    "F.multi_head_attention_forward derives the head size from the query width and the head "
    "count it is passed, and checks its projection weights against that width, so the "
    "widths it touches are kept whole; call the nn.MultiheadAttention module (which prunekit "
    "prunes by heads) to prune them")


def _functional_attention(ctx: TraceContext, call: OpCall) -> None:
    """``F.multi_head_attention_forward`` (WavLM's gated relative attention): every tensor
    it reads keeps its shape, and its outputs carry no channels."""
    for tensor in tensors_in((call.args, call.kwargs)):
        ctx.block(ctx.labels(tensor), FUNCTIONAL_ATTENTION)
    for out in tensors_in(call.out):
        ctx.set_labels(out, fixed_shape(ctx.space, out.shape, FUNCTIONAL_ATTENTION))


def shared_slope(ctx: TraceContext, weight: Tensor) -> None:
    """Note a PReLU slope shared by every channel as read, with nothing to cut (the
    coverage report said it was never read)."""
    ctx.block(ctx.labels(weight), "a single PReLU slope shared by every channel: no "
                                  "channel axis to cut")


def _prelu(ctx: TraceContext, call: OpCall) -> None:
    """``F.prelu(x, weight)``: one slope per channel (dim 1, dim 0 for a 1-D input) or one
    for all; a per-channel slope vector is coupled to the channels as a scale is."""
    x, weight = call.arg(0, "input"), call.arg(1, "weight")
    out = tensors_in(call.out)[0]
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise OpNotMappable("input and weight must be tensors")
    if weight.numel() == 1 or x.dim() == 0:
        shared_slope(ctx, weight)
        ctx.set_labels(out, ctx.labels(x))
        return
    view = [1] * x.dim()
    view[1 if x.dim() > 1 else 0] = weight.numel()
    ctx.set_labels(out, combine(ctx, [ctx.labels(x), ctx.labels(weight).reshape(view)],
                                out.shape))


register_op(("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
             "conv_transpose3d"), _functional_layer)
register_op(("prelu",), _prelu)
register_op(("bilinear",), _bilinear)
register_op(("embedding", "embedding_bag"), _embedding)
register_op(("multi_head_attention_forward",), _functional_attention)
