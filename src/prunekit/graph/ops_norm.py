"""Functional normalisation (``F.layer_norm``, ``F.group_norm``, ``F.batch_norm``,
``F.instance_norm``, ``F.rms_norm``) called by code rather than by a norm module.

The affine vectors and running statistics are parameters or buffers used directly, so
they become param nodes coupled to the normalised channel dim and are cut with it; the
layer adapter's ``sync`` then re-derives the module's size attribute. Without an affine
vector the size is only written in the call, so those channels are kept whole.

``layer_norm``/``rms_norm`` also take the width itself (``normalized_shape``). In an
``nn.LayerNorm``/``nn.RMSNorm`` (subclasses with a forward of their own included) the
adapter's ``sync`` rewrites it; elsewhere it must follow the channels: read from the input's
shape (``x.shape[-1:]``) it does by itself; a tuple attribute of the calling module passed
as is (``F.layer_norm(x, self.shape, ...)``) or a tuple of one int attribute
(``(self.dim,)``) is bound and rewritten; a literal keeps the channels whole.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from prunekit.graph.callers import calling_module
from prunekit.graph.labels import rep_along, varies, varying
from prunekit.graph.ops import OpCall, OpNotMappable, register_op, tensors_in
from prunekit.graph.ops_pointwise import combine
from prunekit.graph.ops_shape import first_line, holding
from prunekit.graph.sizes import SizeInt
from prunekit.graph.trace import TraceContext

_AFFINE_POSITIONS = {
    "layer_norm": (2, 3), "rms_norm": (2,), "group_norm": (2, 3),
    "batch_norm": (1, 2, 3, 4), "instance_norm": (1, 2, 3, 4),
}
_AFFINE_NAMES = {
    "layer_norm": ("weight", "bias"), "rms_norm": ("weight",), "group_norm": ("weight", "bias"),
    "batch_norm": ("running_mean", "running_var", "weight", "bias"),
    "instance_norm": ("running_mean", "running_var", "weight", "bias"),
}


ROWS = ("normalises each row of features on its own (a per-head qk_norm = "
        "LayerNorm(head_dim) after whole heads, a LayerNorm over a conv's frequency axis): "
        "the channels along the other dims pass through whole, and its own width stays")


def normalises_rows(ctx: TraceContext, x: Tensor, dim: int) -> bool:
    """Whether a norm over the dims of ``x`` from ``dim`` on (LayerNorm, RMSNorm) meets
    channels along earlier dims only. Each row is then normalised on its own: those channels
    pass through exactly (removing one removes whole rows), and the norm's width, which no
    unit spans in part, stays whole (:data:`ROWS`). Joining its weight with them instead
    would tie every head into one unit."""
    first = dim % x.dim()
    vector = ctx.vector_of(x)
    if vector is not None:
        return vector[0] < first and varies(ctx.space.find(vector[1]), 0)
    found = varying(ctx.space.find(ctx.labels(x)))
    return bool(found) and max(found) < first


def _norm(ctx: TraceContext, call: OpCall) -> None:
    x = tensors_in(call.args[:1])[0]
    out = tensors_in(call.out)[0]
    labels = ctx.labels(x)
    affine = [call.arg(p, n) for p, n in zip(_AFFINE_POSITIONS[call.name],
                                               _AFFINE_NAMES[call.name], strict=True)]
    vectors = [t for t in affine if isinstance(t, Tensor)]
    if call.name in {"layer_norm", "rms_norm"}:
        shape = call.arg(1, "normalized_shape")
        if not isinstance(shape, (list, tuple)) or len(shape) != 1:
            raise OpNotMappable(f"normalized_shape={shape!r} spans several dims")
        dim = x.dim() - 1
        if normalises_rows(ctx, x, dim):
            for vector in vectors:
                ctx.block(ctx.labels(vector), f"{call.display} {ROWS}")
            ctx.set_labels(out, labels)
            return
        _written_width(ctx, call, shape, labels, dim)
    else:
        dim = 1
    if call.name == "group_norm":
        groups = call.arg(1, "num_groups")
        if isinstance(groups, int) and groups > 1:  # channel j of every group leaves together
            moved = ctx.space.find(labels).movedim(dim, -1)
            rep_along(ctx.space, moved.reshape(*moved.shape[:-1], groups, -1), (moved.dim() - 1,))
    named = dict(zip(_AFFINE_NAMES[call.name], affine, strict=True))
    if not isinstance(named.get("weight"), Tensor):
        ctx.block(labels, f"{call.display} without an affine vector has its width written "
                          f"in the call")
    view = [1] * x.dim()
    view[dim] = x.shape[dim]
    operands = [labels] + [ctx.labels(t).reshape(view) for t in vectors]
    ctx.set_labels(out, combine(ctx, operands, out.shape))


def _written_width(ctx: TraceContext, call: OpCall, shape: list[Any] | tuple[Any, ...],
                   labels: Tensor, dim: int) -> None:
    """Make the ``normalized_shape`` a functional norm is passed follow the channels, or
    keep them whole (see the module docstring)."""
    if isinstance(shape[0], SizeInt) or not varies(ctx.space.find(labels), dim):
        return
    path, module = calling_module(ctx)
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):  # its adapter's sync rewrites it
        return
    line = first_line(ctx.space.find(labels), dim)
    owner = next((k for k, v in vars(module).items() if v is shape), None)
    if owner is not None:
        ctx.bind_attribute(path, f"{owner}[0]", line)
        return
    holders = holding(ctx, shape[0]) if path == ctx.path else []
    if len(holders) == 1:
        ctx.bind_attribute(path, holders[0], line)
        return
    ctx.block(labels, f"{call.display} is passed normalized_shape={tuple(shape)!r}, a width "
                      f"written in the code; pass x.shape[-1:] or keep it in an attribute "
                      f"(self.normalized_shape) to prune these channels")


register_op(tuple(_AFFINE_POSITIONS), _norm)
