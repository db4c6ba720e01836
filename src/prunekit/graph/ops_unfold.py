"""Sliding windows: ``Tensor.unfold(dim, size, step)`` and ``F.unfold`` (im2col).

``x.unfold(dim, size, step)`` cuts ``dim`` into windows and appends a last dim of ``size``
(halo attention's ``x.unfold(2, k, s).unfold(3, k, s)``, framing a signal). Along a dim that
carries no channels it is replayed on the labels, so each window element keeps the label
of the element it copies and the channels stay where they were. Along a channel dim, the
number of windows and what each holds would change with every channel removed, so the
call is not mapped (strict tracing refuses it, ``strict=False`` keeps its channels whole).

``F.unfold(x, kernel_size, ...)`` turns ``[N, C, H, W]`` into ``[N, C·kh·kw, L]``: row
``c·K + p`` holds channel ``c`` at kernel position ``p``, so each input channel becomes a
block of ``K`` rows (padding included, which belongs to its channel) and leaves with it.
Spatial dims that carry channels are not mapped. ``F.fold`` (col2im, VOLO's outlook
attention) is its inverse, ``[N, C·kh·kw, L]`` to ``[N, C, H, W]``: output channel ``c`` sums
rows ``c·K`` to ``c·K + K - 1``, so those rows are joined and leave together with it.

``pixel_unshuffle(x, r)`` (space to depth) and ``pixel_shuffle(x, r)`` (depth to space, the
upsampler of super-resolution nets) map channels the same two ways with ``K = r²``:
``[N, C, H, W]`` to ``[N, C·r², H/r, W/r]``, each channel a block of ``r²``, and back, each
block of ``r²`` channels one output channel (the block leaves whole).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from prunekit.graph.labels import varying
from prunekit.graph.ops import OpCall, OpNotMappable, register_op, tensors_in
from prunekit.graph.ops_shape import first_line
from prunekit.graph.trace import TraceContext


def _unfold(ctx: TraceContext, call: OpCall) -> None:
    if call.func is F.unfold:
        _im2col(ctx, call)
        return
    source = tensors_in(call.args[:1])[0]
    dim = call.args[1] if len(call.args) > 1 else call.kwargs.get("dimension")
    out = tensors_in(call.out)[0]
    if not isinstance(dim, int) or source.dim() == 0:
        raise OpNotMappable(f"dimension={dim!r} is not a dim of a tensor with dims")
    dim %= source.dim()
    vector = ctx.vector_of(source)
    if vector is not None:  # channels along one dim: they stay there (a dim is appended)
        if vector[0] == dim:
            raise _channel_windows(dim)
        ctx.set_vector(out, ctx.space.find(vector[1]), vector[0])
        return
    labels = ctx.space.find(ctx.labels(source))
    if dim in varying(labels):
        raise _channel_windows(dim)
    size, step = out.shape[-1], _step(call)
    ctx.set_labels(out, labels.unfold(dim, size, step))


def _step(call: OpCall) -> int:
    step = call.args[3] if len(call.args) > 3 else call.kwargs.get("step")
    if not isinstance(step, int) or step < 1:
        raise OpNotMappable(f"step={step!r} is not a positive int")
    return step


def _channel_windows(dim: int) -> OpNotMappable:
    return OpNotMappable(f"it slides windows along dim {dim}, which carries channels: how "
                         f"many windows there are and what each holds would change with "
                         f"every channel removed")


def _im2col(ctx: TraceContext, call: OpCall) -> None:
    source = tensors_in(call.args[:1] or (call.kwargs.get("input"),))[0]
    out = tensors_in(call.out)[0]
    cdim = source.dim() - 3  # [N, C, H, W] or unbatched [C, H, W]
    if cdim < 0 or out.dim() != cdim + 2 or out.shape[cdim] % source.shape[cdim]:
        raise OpNotMappable(f"input of shape {tuple(source.shape)} gives an output of shape "
                            f"{tuple(out.shape)}, not [N, C·K, L]")
    _spread(ctx, source, out, cdim, "batch or spatial dims, which it gathers into windows")


def _spread(ctx: TraceContext, source: Tensor, out: Tensor, cdim: int, others: str) -> None:
    """Each channel of ``source`` along ``cdim`` becomes a block of ``out``'s channels."""
    per_channel = out.shape[cdim] // source.shape[cdim]
    channels = _channel_line(ctx, source, cdim, others).repeat_interleave(per_channel)
    ctx.set_vector(out, channels, cdim)


def _col2im(ctx: TraceContext, call: OpCall) -> None:
    source = tensors_in(call.args[:1] or (call.kwargs.get("input"),))[0]
    out = tensors_in(call.out)[0]
    cdim = source.dim() - 2  # [N, C·K, L] or unbatched [C·K, L]
    if cdim < 0 or out.dim() != cdim + 3 or source.shape[cdim] % max(out.shape[cdim], 1):
        raise OpNotMappable(f"input of shape {tuple(source.shape)} gives an output of shape "
                            f"{tuple(out.shape)}, not [N, C, H, W]")
    _gather(ctx, source, out, cdim, "batch or window dims, which it sums into pixels")


def _gather(ctx: TraceContext, source: Tensor, out: Tensor, cdim: int, others: str) -> None:
    """Each block of ``source``'s channels along ``cdim`` becomes one channel of ``out``:
    the block's channels are joined and leave together."""
    rows = _channel_line(ctx, source, cdim, others).reshape(out.shape[cdim], -1)  # [C, K]
    ctx.space.union(rows, rows[:, :1].expand_as(rows))
    ctx.set_vector(out, ctx.space.find(rows[:, 0].contiguous()), cdim)


def _pixel_shuffle(ctx: TraceContext, call: OpCall) -> None:
    source = tensors_in(call.args[:1] or (call.kwargs.get("input"),))[0]
    out = tensors_in(call.out)[0]
    cdim = source.dim() - 3  # [*, C, H, W]
    if cdim < 0 or out.dim() != source.dim():
        raise OpNotMappable(f"input of shape {tuple(source.shape)} gives an output of shape "
                            f"{tuple(out.shape)}, not [*, C, H, W]")
    if call.name == "pixel_shuffle":  # [*, C·r², H, W] -> [*, C, H·r, W·r]
        _gather(ctx, source, out, cdim, "batch or spatial dims, which it interleaves")
    else:  # [*, C, H, W] -> [*, C·r², H/r, W/r]
        _spread(ctx, source, out, cdim, "batch or spatial dims, which it folds into channels")


def _channel_line(ctx: TraceContext, source: Tensor, cdim: int, others: str) -> Tensor:
    """The labels of ``source`` along its channel dim ``cdim``; not mapped where channels
    vary along ``others`` too."""
    labels = ctx.space.find(ctx.labels(source))
    if not varying(labels) <= {cdim}:
        raise OpNotMappable(f"channels vary along its {others}")
    return first_line(labels, cdim)


register_op(("unfold",), _unfold)
register_op(("fold",), _col2im)
register_op(("pixel_shuffle", "pixel_unshuffle"), _pixel_shuffle)
