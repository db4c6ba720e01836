"""Gathers and scatters by an index tensor along one dim (``gather``, ``take_along_dim``,
``scatter``, ``scatter_add``, ``scatter_reduce``), as mixture-of-experts routers use them
to pick their top-k experts' gates (Phi-MoE's ``scores.gather(-1, idx)``, JetMoE's
``zeros.scatter(1, idx, gates)``) and point models to pool features by segment.

The index holds positions along ``dim``: where the data varies along it (channels),
pruning would renumber them, so those channels are kept whole, with the reason. Along
every other dim an element keeps its position: a gather's labels are its source's,
gathered with the same index; a scatter's result holds, where it writes, the labels of
what it writes, joined with the target's there (channel ``c`` of the source lands in
channel ``c`` of the target), and the target's elsewhere.

torchvision's region pooling (``roi_align``, ``roi_pool``: the R-CNN heads) keeps each
channel of the feature map at its index in every region's output; ``masked_scatter`` of
whole rows (a vision-language model's image features put in place of its image tokens)
joins the features' channels with the target's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prunekit.graph.labels import varies
from prunekit.graph.ops import (
    REGION_POOLS,
    OpCall,
    OpNotMappable,
    on_cpu,
    register_op,
    tensors_in,
)
from prunekit.graph.ops_shape import replay
from prunekit.graph.ops_slice import table_columns
from prunekit.graph.trace import TraceContext

GATHERS = ("gather", "take_along_dim")
SCATTERS = ("scatter", "scatter_add", "scatter_reduce")


def _masked_scatter(ctx: TraceContext, call: OpCall) -> None:
    """``embeds.masked_scatter(mask, features)`` with a mask of whole rows (Hugging Face's
    LLaVA, BLIP-2 and Idefics put image features in place of the image tokens: the mask is
    ``(ids == image_token).unsqueeze(-1).expand_as(embeds)``): each feature row fills a whole
    row of the target, so channel ``c`` of the features lands in channel ``c`` of the
    target, and the two are joined. Any other mask is not mapped."""
    target, mask, source = (*call.args, None, None)[:3]
    out = call.out
    if not all(isinstance(t, Tensor) for t in (target, mask, source, out)) or \
            target.dim() < 1 or source.dim() < 1 or source.shape[-1] != target.shape[-1]:
        raise OpNotMappable("expected a mask of whole rows and features of the target's width")
    mask = torch.broadcast_to(mask, target.shape)
    if target.shape[-1] > 1 and not bool((mask == mask[..., :1]).all()):
        raise OpNotMappable("its mask does not cover whole rows")
    space = ctx.space
    labels, written = space.find(ctx.labels(target)), space.find(ctx.labels(source))
    for tensor in (labels, written):
        if any(varies(tensor, dim) for dim in range(tensor.dim() - 1)):
            raise OpNotMappable("its target or features vary along a dim other than the last")
    if labels.numel() and written.numel():
        space.union(labels.reshape(-1, labels.shape[-1])[0],
                    written.reshape(-1, written.shape[-1])[0])
    ctx.set_labels(out, space.find(labels))


def _region_pool(ctx: TraceContext, call: OpCall) -> None:
    """``torchvision.ops.roi_align`` / ``roi_pool`` of a feature map ``[N, C, H, W]`` over
    boxes ``[K, 5]``: region ``k``'s output ``[C, h, w]`` holds channel ``c`` of the map at
    index ``c``, so the output's dim 1 carries the map's channels; the boxes are coordinates,
    which couple nothing (``roi_pool``'s argmax, positions, carries none)."""
    source = call.args[0] if call.args else call.kwargs.get("input")
    outputs = tensors_in(call.out)
    if not isinstance(source, Tensor) or source.dim() != 4 or not outputs:
        raise OpNotMappable("expected a feature map [N, C, H, W]")
    labels = ctx.space.find(ctx.labels(source))
    if any(varies(labels, dim) for dim in (0, 2, 3)):
        raise OpNotMappable("its feature map's labels vary along a dim other than channels")
    line = labels.movedim(1, -1).reshape(-1, labels.shape[1])[0]
    out = outputs[0]
    ctx.set_labels(out, line.reshape(1, -1, 1, 1).expand(tuple(out.shape)))
    for extra in outputs[1:]:
        ctx.set_labels(extra, torch.zeros(extra.shape, dtype=torch.long))


def _block_along(ctx: TraceContext, call: OpCall, tensor: Tensor, dim: int | None) -> None:
    """Keep whole the channels of ``tensor`` that vary along ``dim`` (every dim: None)."""
    canon = ctx.space.find(ctx.labels(tensor))
    dims = range(canon.dim()) if dim is None else (dim % max(canon.dim(), 1),)
    if any(varies(canon, d) for d in dims):
        ctx.block(canon, f"{call.display} picks positions along a channel dimension by "
                         f"index values, which pruning would renumber")


def _gather(ctx: TraceContext, call: OpCall) -> None:
    source = call.args[0] if call.args else call.kwargs.get("input")
    if not isinstance(source, Tensor):
        raise OpNotMappable("its input is not a tensor")
    if call.name == "gather":
        dim: Any = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim")
    else:  # take_along_dim(input, indices, dim=None): None gathers from the flattened input
        dim = call.args[2] if len(call.args) > 2 else call.kwargs.get("dim")
    index = call.arg(2 if call.name == "gather" else 1,
                     "index" if call.name == "gather" else "indices")
    if _table_rows(ctx, call, source, index, dim):
        return
    _block_along(ctx, call, source, dim)
    if dim is not None and isinstance(index, Tensor):
        _fixed_extent(ctx, call, source, index, dim)
    replay(ctx, call)


def _table_rows(ctx: TraceContext, call: OpCall, source: Any, index: Any, dim: Any) -> bool:
    """``table.gather(0, idx)`` of a 2-D parameter or buffer by an index as wide as it (the
    CoAtNet relative bias: ``self.relative_bias_table.gather(0, self.relative_index.repeat(1,
    self.heads))``): rows are picked per column, column ``j`` of the result from column
    ``j`` of the table, as ``table[idx]`` picks whole rows, so the columns are the result's
    channels and the rows stay whole; an index width written from an attribute (``heads``)
    follows the columns. False (nothing done) for any other gather."""
    if not (isinstance(source, Tensor) and isinstance(index, Tensor) and source.dim() == 2
            and index.dim() == 2 and dim in (0, -2) and index.shape[1] == source.shape[1]
            and isinstance(call.out, Tensor) and ctx.is_param(source)):
        return False
    columns = table_columns(ctx, source)
    if columns is None:
        return False
    along = ctx.space.find(ctx.labels(index))
    if varies(along, 1):  # (an index widened to a width an attribute holds)
        ctx.space.union(along.movedim(1, -1).reshape(-1, along.shape[1])[0], columns)
    ctx.set_vector(call.out, ctx.space.find(columns), -1)
    return True


def _fixed_extent(ctx: TraceContext, call: OpCall, source: Tensor, index: Tensor,
                  dim: int) -> None:
    """Along every other dim the index's extent picks the source's first positions; where
    the source carries channels there and the index does not follow them (its width written
    as an int: ``idx.expand(-1, self.channels, -1)``), that extent stays what it is, so the
    source's channels are kept whole (a width read from the source's shape follows)."""
    canon = ctx.space.find(ctx.labels(source))
    if canon.dim() != index.dim():
        return
    dim %= max(canon.dim(), 1)
    follows = ctx.space.find(ctx.labels(index))
    for d in range(canon.dim()):
        if d == dim or not varies(canon, d) or varies(follows, d):
            continue
        if call.name == "take_along_dim" and index.shape[d] == 1:
            continue  # broadcast over every channel
        ctx.block(canon, f"{call.display}'s index spans {index.shape[d]} positions of a "
                         f"channel dim, a size fixed in the code; build the index with the "
                         f"width read from the tensor's shape (x.shape[{d}]) to prune these "
                         f"channels")
        return


def _scatter(ctx: TraceContext, call: OpCall) -> None:
    names = ("input", "dim", "index", "src")
    args = list(call.args) + [call.kwargs[k] for k in names[len(call.args):] if k in call.kwargs]
    if len(args) < 3 or not isinstance(args[0], Tensor) or not isinstance(args[2], Tensor):
        raise OpNotMappable("expected (input, dim, index, src)")
    target, dim, index = args[0], args[1] % max(args[0].dim(), 1), on_cpu(args[2])
    src = args[3] if len(args) > 3 else call.kwargs.get("value")
    _block_along(ctx, call, target, dim)
    labels = ctx.space.find(ctx.labels(target))
    if isinstance(src, Tensor):
        _block_along(ctx, call, src, dim)
        incoming = ctx.space.find(ctx.labels(src))
        region = incoming[tuple(slice(0, size) for size in index.shape)]
        ctx.space.union(labels.gather(dim, index), region)  # what lands joins what was there
        labels = ctx.space.find(labels).clone(memory_format=torch.contiguous_format)
        labels.scatter_(dim, index, ctx.space.find(region))
    for out in tensors_in(call.out):
        ctx.set_labels(out, labels)


register_op(GATHERS, _gather)
register_op(tuple(REGION_POOLS), _region_pool)
register_op(("masked_scatter",), _masked_scatter)
register_op(SCATTERS, _scatter)
