"""Slicing ops (``x[..., :k]``, ``narrow``, ``select``, ``index_select``, ``unbind``,
``tensor_split``, ``as_strided``): the call is replayed on the label tensor, so positions
map exactly.

A selection of fixed size along a channel dimension keeps those channels whole, since the
sizes written in the code would no longer match after pruning; a parameter's sliced axes
are noted and judged once its channel axis is known (:mod:`prunekit.graph.dependency`).
``tensor_split(x, n, dim)`` into a number of parts is ``chunk(n)`` (:mod:`prunekit.graph.
ops_shape`). Three selections do follow pruning (as a getitem or a ``narrow``):

* part ``k`` of ``n`` equal parts of a dim, with bounds computed from that dim's own width
  read in the forward (Swin V2's ``qkv_bias[n // 3: 2 * (n // 3)]``, ``n = numel()``;
  ``x.narrow(1, c // 2, c // 2)``): the parts are coupled index by index, as ``chunk(n)``
  couples them;
* a slice of a tensor built from parameters alone (BEiT's rebuilt relative-position table,
  gathered by position) is judged when the trace ends, once later ops have joined its
  elements to channels: its rows are positions if the channels no longer vary along them;
* the part before or after a boundary one int attribute of the module holds (DPN's
  ``x[:, :self.out_planes]``, ``x[:, d:]``; ``x.narrow(1, 0, self.k)``, the part before
  only): the attribute is bound to the channels before it and rewritten.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from prunekit.graph.labels import rep_along, varies, varying
from prunekit.graph.ops import OpCall, OpNotMappable, on_cpu, register_op, tensors_in
from prunekit.graph.ops_shape import (
    chunking,
    counted,
    defer_same_view,
    first_line,
    holding,
    kernel_view,
    replay,
)
from prunekit.graph.sizes import SizeInt, channel_line
from prunekit.graph.trace import ParamRecord, TraceContext

SLICING = ("getitem", "narrow", "select", "index_select", "unbind", "tensor_split")


def _slicing(ctx: TraceContext, call: OpCall) -> None:
    if call.name == "getitem" and (_defer_expert_pick(ctx, call) or
                                   (kernel_view(call) and defer_same_view(ctx, call))):
        return  # W[e] of a stack of experts; W[:, :, None, None]
    if call.name in ("getitem", "index_select") and _table_lookup(ctx, call):
        return
    if counted(call):  # tensor_split(x, n, dim): n parts, as chunk(n)
        chunking(ctx, call)
        return
    _slice(ctx, call)


def _defer_expert_pick(ctx: TraceContext, call: OpCall) -> bool:
    """``W[e]`` or ``W[ids]`` of a 3-D parameter, a stack of expert weights (Transformers'
    eager experts: ``F.linear(x, self.gate_up_proj[e])``; batched: ``torch.bmm(
    self.gate_up_proj[ids], x)``): left for ``F.linear`` or a matrix product to take as a
    layer weight, whose last two axes are cut in every expert alike; sliced as below if
    anything else reads it. False (nothing done) for any other call."""
    source, index, out = call.args[0], call.args[1], call.out
    if not (isinstance(source, Tensor) and source.dim() == 3 and isinstance(out, Tensor)
            and out.shape[-2:] == source.shape[1:] and ctx.is_param(source)):
        return False
    if isinstance(index, Tensor):  # (an index per token and slot: gpt-fast's experts)
        picks = out.dim() == index.dim() + 2 and not index.is_floating_point() and \
            index.dtype != torch.bool
    else:
        picks = isinstance(index, int) and not isinstance(index, bool)
    if picks:
        ctx.param_views.defer(out, source, "pick", lambda partial: _slice(ctx, call))
    return picks


def _table_lookup(ctx: TraceContext, call: OpCall) -> bool:
    """``V[ids]`` or ``V.index_select(0, ids)`` of a 2-D parameter or buffer by a tensor of
    indices (a hand-written embedding table, a position table looked up by position ids):
    rows picked by the data, so, as in ``F.embedding``, the columns are the result's
    channels and the rows stay whole. False (nothing done) for any other call."""
    source, out = call.args[0], call.out
    if call.name == "getitem":
        index = call.args[1]
    elif call.arg(1, "dim") in (0, -2):
        index = call.arg(2, "index")
    else:
        return False
    if not (isinstance(source, Tensor) and source.dim() == 2 and isinstance(out, Tensor)
            and isinstance(index, Tensor) and not index.is_floating_point()
            and index.dtype != torch.bool and out.shape[-1] == source.shape[1]
            and out.dim() == index.dim() + 1 and ctx.is_param(source)):
        return False
    columns = table_columns(ctx, source)
    if columns is None:
        return False
    ctx.set_vector(out, columns, -1)
    return True


def table_columns(ctx: TraceContext, table: Tensor) -> Tensor | None:
    """The labels of the columns of a 2-D parameter or buffer read as a table of rows (its
    channels, as an embedding's), or None where it is no tensor of the model."""
    record = ctx.layer_weight(table)
    if record is None:
        return None
    return ctx.space.find(ctx.weight_axis(record, 1, count=int(table.shape[1])))


def _slice(ctx: TraceContext, call: OpCall) -> None:
    source = tensors_in(call.args[:1])[0]
    ctx.labels(source, partial=True)  # (a parameter's first read makes its record)
    record = ctx.param_record(source)
    if record is not None:  # a parameter's channel axis is only known later
        record.sliced_axes.update(_selected_dims(call, source))
        _mark_selected(call, source, record)
    else:
        judge_selection(ctx, call, source)
    replay(ctx, call, partial=True)


def judge_selection(ctx: TraceContext, call: OpCall, source: Tensor) -> None:
    """Keep the channels whole where ``call`` (a getitem, ``narrow``... or a setitem, which
    writes where the getitem would read) picks a part of a channel dim that would not
    follow pruning (see the module docstring)."""
    canon = ctx.space.find(ctx.labels(source, partial=True))
    touched = _selected_dims(call, source)
    if _equal_part(ctx, call, source, canon) or _interleaved_part(ctx, call, source, canon) \
            or _attribute_part(ctx, call, source, canon):
        pass  # qkv_bias[n // 3: 2 * (n // 3)] with n its own numel(), gate_up[..., ::2],
        # x[:, :self.width]
    elif any(varies(canon, d) for d in touched):
        verb = "writes to" if call.name == "setitem" else "selects"
        why = f"{call.display} {verb} a fixed part of a channel dimension"
        raw = ctx.labels(source, partial=True)
        if ctx.is_param_built(source):
            # built from parameters (BEiT's relative-position table: an interpolated part
            # of the table concatenated with its last rows, then gathered by position): the
            # rows are positions once later ops join each column to a head, so judge then
            ctx.at_end.append(lambda: _judge_slice(ctx, raw, touched, why))
        elif call.name != "setitem" and isinstance(call.out, Tensor):
            # judged once its values are read: a part read only for its shape
            # (torch.ones_like(x[:, :1])) fixes nothing
            ctx.watch(call.out, lambda: ctx.block(canon, why))
        else:
            ctx.block(canon, why)


def _equal_part(ctx: TraceContext, call: OpCall, source: Tensor, canon: Tensor) -> bool:
    """Whether ``call`` picks part ``k`` of ``n`` equal parts of one dim, its bounds computed
    from that dim's own width read in the forward (torchvision's Swin V2 zeroes the k third
    of a copy of the fused q/k/v bias: ``length = qkv_bias.numel() // 3;
    qkv_bias[length: 2 * length]``); if so, the parts are coupled index by index, as
    ``chunk(n)`` couples them, so they shrink alike and the bounds the code computes after
    pruning still pick the same part."""
    found = _shares(ctx, call, source, canon)
    if found is None:
        return False
    dim, start, stop = found
    width = source.shape[dim]
    part = stop - start
    if part <= 0 or part.numerator != 1 or start % part != 0 or width % part.denominator:
        return False
    pieces = ctx.space.find(canon).split(width // part.denominator, dim)
    first = pieces[0]
    for piece in pieces[1:]:
        ctx.space.union(first, piece)
    return True


def _interleaved_part(ctx: TraceContext, call: OpCall, source: Tensor, canon: Tensor) -> bool:
    """Whether ``call`` picks every ``k``-th index of one dim from offset ``r < k`` (GPT-OSS
    interleaves gate and up: ``gate_up[..., ::2]``, ``gate_up[..., 1::2]``); if so, each run
    of ``k`` neighbours is coupled, so whole runs go and the offsets still pick the same
    member of every run kept."""
    found = _one_slice(call, source)
    if found is None:
        return False
    dim, item = found
    step, width = item.step, source.shape[dim]
    if type(step) is not int or step < 2 or width % step or item.stop is not None or \
            item.start not in (None, *range(step)):
        return False
    rep_along(ctx.space, canon.unflatten(dim, (width // step, step)), (dim + 1,))
    return True


def _attribute_part(ctx: TraceContext, call: OpCall, source: Tensor, canon: Tensor) -> bool:
    """Whether ``call`` cuts one dim at a boundary that one int attribute of the running
    module holds, taking the part before or after it (DPN's ``d = self.out_planes;
    x[:, :d] + out[:, :d]``, ``x[:, d:]``): the attribute counts the channels before the
    boundary, so it is bound to them and rewritten with those kept, and both parts still
    split where they did. A boundary no single attribute holds (a literal) is not one."""
    found = _boundary(call, source)
    if found is None:
        return False
    dim, boundary = found
    if not 0 < boundary < source.shape[dim]:
        return False
    holders = holding(ctx, boundary)
    if len(holders) != 1:
        return False
    ctx.bind_attribute(ctx.path, holders[0], first_line(canon, dim)[:boundary])
    return True


def _one_slice(call: OpCall, source: Tensor) -> tuple[int, slice] | None:
    """(dim, slice) where ``call`` is a getitem that slices one dim of ``source`` and takes
    every other dim whole (``x[a:b]``, ``x[..., ::2]``); None for any other call."""
    if call.name not in ("getitem", "setitem"):
        return None
    index = call.args[1]
    items = index if isinstance(index, tuple) else (index,)
    if any(item is None or isinstance(item, Tensor) for item in items):
        return None
    sliced = [(pos, item) for pos, item in enumerate(items)
              if item is not Ellipsis and not (isinstance(item, slice) and item == slice(None))]
    if len(sliced) != 1 or not isinstance(sliced[0][1], slice):
        return None
    pos, item = sliced[0]
    if Ellipsis in items and pos > items.index(Ellipsis):  # counted from the last dim
        pos = source.dim() - (len(items) - pos)
    return pos, item


def _narrowed(call: OpCall, source: Tensor) -> tuple[int, int, int] | None:
    """(dim, start, length) of ``narrow(dim, start, length)``, else None."""
    if call.name != "narrow":
        return None
    dim, start, length = (call.arg(i, name) for i, name in
                          ((1, "dim"), (2, "start"), (3, "length")))
    if not isinstance(dim, int) or not isinstance(start, int) or not isinstance(length, int):
        return None  # a tensor start
    return dim % source.dim(), start, length


def _shares(ctx: TraceContext, call: OpCall, source: Tensor, canon: Tensor
            ) -> tuple[int, Fraction, Fraction] | None:
    """(dim, start, stop) of a selection of one dim with step 1, each bound a share of that
    dim's width read in the forward (:func:`_share`): ``x[a:b]``, or ``x.narrow(dim, a, n)``
    from ``a`` to ``a + n``; None where a bound is no such share."""
    found = _one_slice(call, source)
    if found is not None:
        dim, item = found
        if item.step not in (None, 1):
            return None
        start = _share(ctx, canon, dim, item.start, Fraction(0))
        stop = _share(ctx, canon, dim, item.stop, Fraction(1))
        return None if start is None or stop is None else (dim, start, stop)
    narrowed = _narrowed(call, source)
    if narrowed is None:
        return None
    dim, first, length = narrowed
    start, part = (_share(ctx, canon, dim, first, Fraction(0)),
                   _share(ctx, canon, dim, length, Fraction(1)))
    return None if start is None or part is None else (dim, start, start + part)


def _boundary(call: OpCall, source: Tensor) -> tuple[int, int] | None:
    """(dim, boundary) where the call takes the part of one dim before an int boundary
    (``x[:, :d]``, ``x.narrow(1, 0, d)``) or after it (``x[:, d:]``), else None."""
    found = _one_slice(call, source)
    if found is not None:
        dim, item = found
        if item.step not in (None, 1):
            return None
        if item.start in (None, 0) and type(item.stop) is int:
            return dim, item.stop
        if item.stop is None and type(item.start) is int:
            return dim, item.start
        return None
    narrowed = _narrowed(call, source)
    if narrowed is not None and narrowed[1] == 0 and type(narrowed[2]) is int:
        return narrowed[0], narrowed[2]
    return None


def _share(ctx: TraceContext, canon: Tensor, dim: int, bound: Any,
           default: Fraction) -> Fraction | None:
    """A slice bound as a fraction of the width of ``canon``'s ``dim``: ``default`` for
    None, 0 for 0, ``a/b`` for a SizeInt read from that very dim times ``a/b``; else None."""
    if bound is None:
        return default
    if type(bound) is int:
        return Fraction(0) if bound == 0 else None
    if not isinstance(bound, SizeInt) or bound._scale is None:
        return None
    line, _ = channel_line(ctx, bound)
    roots = first_line(canon, dim)
    if line is None or line.shape != roots.shape or not torch.equal(line, roots):
        return None
    return Fraction(*bound._scale)


def _judge_slice(ctx: TraceContext, raw: Tensor, touched: list[int], why: str) -> None:
    """The deferred check of :func:`_slice`: the channels still vary along a dim the call
    picked from, so it picked channels: kept whole."""
    canon = ctx.space.find(raw)
    if any(varies(canon, d) for d in touched):
        ctx.block(canon, why)


def _mark_selected(call: OpCall, source: Tensor, record: ParamRecord) -> None:
    """Remember which elements of a parameter a slicing call reads."""
    positions = torch.arange(source.numel()).reshape(source.shape)
    picked = tensors_in(call.func(positions, *on_cpu(call.args[1:]), **on_cpu(call.kwargs)))
    mask = torch.zeros(source.numel(), dtype=torch.bool)
    for part in picked:
        mask[part.reshape(-1)] = True
    mask = mask.reshape(source.shape)
    record.selected = mask if record.selected is None else record.selected | mask


def _selected_dims(call: OpCall, source: Tensor) -> list[int]:
    """Dims of ``source`` on which the call keeps only part of the indices."""
    ndim = source.dim()
    if call.name in ("getitem", "setitem"):
        return _getitem_dims(call.args[1], source)
    if call.name == "unbind":
        dim = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim", 0)
        return [dim % ndim]
    if call.name == "tensor_split":
        dim = call.args[2] if len(call.args) > 2 else call.kwargs.get("dim", 0)
        return [dim % ndim]
    dim = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim", 0)
    dim = dim % ndim
    if call.name == "narrow":
        length = call.args[3] if len(call.args) > 3 else call.kwargs.get("length")
        return [dim] if length != source.shape[dim] else []
    return [dim]


def _getitem_dims(index: Any, source: Tensor) -> list[int]:
    items = index if isinstance(index, tuple) else (index,)
    consumed = sum(
        (it.dim() if isinstance(it, Tensor) and it.dtype == torch.bool else 1)
        for it in items if it is not None and it is not Ellipsis
    )
    dims: list[int] = []
    pos = 0
    for item in items:
        if item is None:
            continue
        if item is Ellipsis:
            pos += source.dim() - consumed
            continue
        width = item.dim() if isinstance(item, Tensor) and item.dtype == torch.bool else 1
        for d in range(pos, pos + width):
            if d < source.dim() and not _is_full(item, source.shape[d]):
                dims.append(d)
        pos += width
    return dims


def _is_full(item: Any, size: int) -> bool:
    if isinstance(item, slice):
        start, stop, step = item.indices(size)
        return start == 0 and stop == size and step == 1
    return False


_STORAGE_LIMIT = 1 << 25  # label elements a storage replay of as_strided may allocate


def _as_strided(ctx: TraceContext, call: OpCall) -> None:
    """``x.as_strided(size, stride, offset)`` (Longformer's overlapping chunks): replayed on a
    label storage laid out as ``x``'s data, so every element gets the labels of the data it
    views. The view follows pruning only where each dim along which ``x``'s channels vary
    comes out whole, with its stride, sized by a shape read (``list(x.size())``) and alone
    carrying those channels; otherwise its channels are kept whole, since sizes or strides
    written in the code would view the wrong elements after pruning."""
    source = call.args[0] if call.args else call.kwargs.get("input")
    names = ("size", "stride", "storage_offset")
    size, stride, offset = (call.args[i + 1] if len(call.args) > i + 1 else call.kwargs.get(k)
                            for i, k in enumerate(names))
    out = tensors_in(call.out)
    if not isinstance(source, Tensor) or len(out) != 1 or size is None or stride is None:
        raise OpNotMappable("expected as_strided(input, size, stride[, storage_offset])")
    count = source.untyped_storage().nbytes() // max(source.element_size(), 1)
    if count > _STORAGE_LIMIT:
        raise OpNotMappable(f"its storage holds {count} elements, too many to relabel")
    canon = ctx.space.find(ctx.labels(source))
    store = torch.zeros(count, dtype=torch.long)  # NEUTRAL where x's data is not
    store.as_strided(source.shape, source.stride(), source.storage_offset()).copy_(canon)
    start = source.storage_offset() if offset is None else int(offset)
    labels = store.as_strided(tuple(int(n) for n in size), tuple(int(n) for n in stride), start)
    whole = [next((e for e in range(len(size)) if isinstance(size[e], SizeInt)
                   and int(size[e]) == source.shape[dim] and int(stride[e]) == source.stride(dim)),
                  None) for dim in varying(canon)]  # each channel dim's dim in the view
    if None not in whole and varying(labels) <= set(whole):
        ctx.set_labels(out[0], labels)
        return
    ctx.block(canon, f"{call.display} views a channel dimension with sizes or strides "
                     f"written in the code")
    ctx.set_labels(out[0], ctx.space.find(labels))


register_op(SLICING, _slicing)
register_op(("as_strided",), _as_strided)
