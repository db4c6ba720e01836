"""Reshape ops (``view``, ``reshape``, ``flatten``, ...): the reshape is replayed on the
label tensor, so flatten blocks and channel shuffles map indices exactly as they map data.

Rules that keep the replay sound after channels are removed:

- A reshape that *splits* a dimension along which channels vary in more than one of the
  new factors lets one factor shrink.
- Whole heads shrink when the head count comes from a ``*head*`` attribute
  (``[B, T, C] -> [B, T, self.num_heads, head_dim]``); the attribute is rewritten.
- Otherwise the last factor shrinks (a channel shuffle's ``[B, C] -> [B, groups,
  C/groups]``: channel ``j`` of every group goes together, so the group count written in
  the code stays valid); ``self.head_dim`` is rewritten if used. A last factor written as
  a plain int that no attribute holds (a literal, ``self.config.d_head`` read into a local)
  cannot shrink, so those channels are kept whole.
- A leading factor left to -1 before a last factor that is a width read whole from a
  shape (DLRM's ``view(B, -1, d)``, ``d = x.shape[1]``) keeps its count: the last factor
  shrinks with the width read, alike in every part.
- Whole heads go only if the per-head size is left to -1 or held by an attribute
  (``self.head_dim``). One computed from the width read from the block's input (nanoGPT's
  ``C // self.n_head``) keeps the heads and shrinks every head alike, with that input width
  (:func:`_per_head_share`); one computed otherwise keeps the heads, and the input width of
  the layer they come from, whole.
- A reshape that *merges* heads back into one dim (or leaves a channel dim whole) and
  writes its size from an int attribute binds that attribute, which is rewritten: one the
  call's own expression reads (``reshape(B, N, self.out_dim)``, whatever its name), else
  one named for it and read in an earlier statement (``new_shape = ... +
  (self.all_head_size,)``). A model width of equal value that the call does not read
  (``self.hidden_size`` where the code writes ``self.num_heads * self.head_dim``) is not
  what sized it and must not be rewritten.
- As for splits, attributes are matched by value (see :mod:`prunekit.graph.ops_shape`);
  of several holding the size, those the call's expression reads are taken. Where the
  call writes the matched size for two factors of one split (``view(b, self.groups, c //
  self.groups, h, w)`` with 3 groups of 3), the attribute might size either, so those
  channels are kept whole unless its name says (``*head*``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from prunekit.graph.callers import (
    arguments_written,
    assigned_reads,
    attributes_by_argument,
    attributes_read,
    calling_module,
    literals_written,
    products_written,
    size_read_elsewhere,
)
from prunekit.graph.labels import rep_along, varies, varying
from prunekit.graph.ops import OpCall, register_op, tensors_in
from prunekit.graph.ops_shape import (
    SHORT_HEAD_COUNTS,
    attribute_holding,
    counts_heads,
    defer_same_view,
    first_line,
    holding,
    int_attributes,
    kernel_view,
    replay,
    running_module_phrase,
    scaled_reads,
    tensors_free,
)
from prunekit.graph.sizes import SizeInt
from prunekit.graph.trace import TraceContext

RESHAPE = ("view", "reshape", "flatten", "unflatten", "view_as", "reshape_as", "ravel")


def _reshape(ctx: TraceContext, call: OpCall) -> None:
    if call.name in ("view", "reshape") and kernel_view(call) and defer_same_view(ctx, call):
        return  # W.view(c, c, 1, 1) of a parameter: left for a layer to take as W
    source = tensors_in(call.args[:1])[0]
    if not _reshape_vector(ctx, call, source):
        _reshape_general(ctx, call, source)
    if call.name in ("view", "reshape"):
        _bind_written_sizes(ctx, call, source)


def _reshape_general(ctx: TraceContext, call: OpCall, source: Tensor) -> None:
    replay(ctx, call)
    out = tensors_in(call.out)[0]
    labels = ctx.labels(out)
    for src_dims, out_dims in _segments(tuple(source.shape), tuple(out.shape)):
        if len(out_dims) < 2:
            continue
        canon = ctx.space.find(labels)
        dims = varying(canon)
        bearing = [d for d in out_dims if d in dims]
        if not bearing:
            outside = {n for d, n in enumerate(source.shape) if d not in src_dims}
            _check_fixed_split(ctx, call, canon, out_dims, outside)
        if len(bearing) == 1:
            _one_varying_factor(ctx, call, canon, out_dims, bearing[0])
        if len(bearing) < 2:
            continue
        shrink, attr = _shrinking_factor(ctx, call, canon, bearing, out_dims)
        rep_along(ctx.space, canon, tuple(d for d in bearing if d != shrink))
        if attr is not None and not _read_elsewhere(ctx, call, canon, attr, shrink):
            line = first_line(ctx.space.find(canon), shrink)
            count = int_attributes(ctx).get(attr, line.numel())
            ctx.bind_attribute(ctx.path, attr, line[:count])  # (heads merged with batch)
            _bind_group_total(ctx, canon, bearing, shrink, attr)


def _bind_group_total(ctx: TraceContext, labels: Tensor, bearing: list[int], shrink: int,
                      attr: str) -> None:
    """A count of groups (``self.num_kv_heads``, bound to factor ``shrink``) followed by
    factors the call writes neither as literals nor as attributes (the GQA paper's ``view(B,
    T, self.num_kv_heads, g, self.head_dim)``, ``g = self.num_heads // self.num_kv_heads``
    computed in ``forward``): those factors stay, so a head-count attribute holding the
    product (``num_heads``, the total of query heads) shrinks with the groups. Were it left,
    the pruned model would compute ``g`` anew from it and split the heads wrongly."""
    args = arguments_written(ctx)
    between = [d for d in bearing[:-1] if d > shrink]
    if args is None or len(args) != labels.dim() or not between or \
            any(args[d] is not None for d in between):
        return
    total = labels.shape[shrink] * math.prod(labels.shape[d] for d in between)
    totals = [k for k, v in int_attributes(ctx).items()
              if v == total and k != attr and counts_heads(k)]
    if len(totals) == 1:
        dims = [shrink, *between]
        block = labels.movedim(dims, list(range(labels.dim() - len(dims), labels.dim())))
        ctx.bind_attribute(ctx.path, totals[0], block.reshape(-1, total)[0])


def _bind_written_sizes(ctx: TraceContext, call: OpCall, source: Tensor) -> None:
    """Sizes the call takes from attributes of the module whose code made it
    (:func:`~prunekit.graph.callers.calling_module`: the running module, or a child whose
    helper method it called), for dims of the result that carry channels and that the
    reshape leaves whole or makes by merging; such an attribute is bound and rewritten with
    the channels kept (splits are judged by :func:`_one_varying_factor` and
    :func:`_shrinking_factor`):

    - the whole size is a tuple attribute, passed as is (``view(self.bias_shape)`` in
      timm's relative position biases, ``view(self.shape)`` in MetaFormer's ``Scale``):
      found by identity, so a tuple of equal value elsewhere is never taken for it; its
      element for that dim is bound (``bias_shape[2]``);
    - a dim left whole or merged from several (heads back into one width), written as an
      int that one int attribute holds: one the call's expression reads
      (:func:`~prunekit.graph.callers.attributes_read`: ``reshape(B, N, self.out_dim)`` in
      TinyViT, ``self.dim_out`` in Hiera, ``self.in_dim`` in TNT) or the assignment of a
      local it passes reads (:func:`~prunekit.graph.callers.assigned_reads`: ``size_out =
      x.size()[:-1] + (self.nf,)`` in GPT-2's ``Conv1D`` copied into user code), else one
      named for a merged heads width (``view(new_shape)`` with ``self.all_head_size`` put
      in it a line before, as MobileViT and older BERT code write it) or, for a dim left
      whole, a head count (``view(-1, self.num_heads)``). Where several hold a merged size,
      which one sized it is unknown, so the channels are kept whole. A size left to -1, or
      computed (``self.num_heads * self.head_dim``, ``x.shape[-1]``), follows by itself; an
      attribute of equal value that the call does not read (a model width) is not bound,
      since it may size something else.
    """
    out = tensors_in(call.out)[0]
    written = call.args[1] if len(call.args) == 2 else call.kwargs.get("shape")
    path, module = calling_module(ctx)
    state = vars(module)
    owner = attribute_holding(state, written) \
        if isinstance(written, (tuple, list)) and len(written) == out.dim() else None
    sizes = tensors_free(call.args[1:]) or tensors_free(tuple(call.kwargs.values()))
    read = attributes_read(ctx) | assigned_reads(ctx)
    ints = {k: v for k, v in state.items() if type(v) is int and v in sizes
            and (k in read or counts_heads(k) or _merges_heads(k))}
    if owner is None and not ints and not any(type(s) is int and s > 1 for s in sizes):
        return
    labels = None
    for src_dims, out_dims in _segments(tuple(source.shape), tuple(out.shape)):
        if len(out_dims) != 1:
            continue
        dim = out_dims[0]
        if labels is None:
            labels = ctx.space.find(ctx.labels(out))
        if dim not in varying(labels):
            continue
        if owner is not None and isinstance(written, (tuple, list)):
            if written[dim] != -1:
                ctx.bind_attribute(path, f"{owner}[{dim}]", first_line(labels, dim))
            continue
        size = out.shape[dim]
        aligned = len(sizes) == out.dim()
        if (aligned and (sizes[dim] != size or isinstance(sizes[dim], SizeInt))) or (
                len(src_dims) == 1 and not aligned) or size not in sizes:
            continue  # left to -1, computed from a shape read, or not where it can be told
        holders = [k for k, v in ints.items() if v == size and k in read] or [
            k for k, v in ints.items() if v == size
            and (_merges_heads(k) or (len(src_dims) == 1 and counts_heads(k)))]
        fixed = None if holders or not aligned or type(sizes[dim]) is not int else \
            "a literal" if size in literals_written(ctx) else size_read_elsewhere(ctx, size)
        if fixed is not None:
            # a literal (PointNet's view(-1, 1024) after the max over points) or an element
            # of a list attribute cannot follow the channels it sizes; a product of
            # attributes (self.num_heads * self.head_dim) follows them by itself
            where = fixed if fixed == "a literal" else f"read from {fixed}"
            ctx.block(labels, f"{call.display} sizes channels (dim {dim}) by {size}, "
                              f"{where} in the code, so they are kept whole; size that dim "
                              f"from the tensor (-1, or x.shape[{dim}]) to prune them")
            continue
        if not holders and aligned and len(src_dims) > 1:
            _bind_product_factor(ctx, call, source, labels, src_dims, dim, state, path)
        elif len(holders) == 1:
            ctx.bind_attribute(path, holders[0], first_line(labels, dim))
        elif holders and len(src_dims) > 1:
            ctx.block(labels, f"{call.display} merges channels into a size of {size}, which "
                              f"several attributes of {running_module_phrase(ctx)} hold "
                              f"({', '.join(holders)}), so which one sizes it is unknown; "
                              f"write -1 for it, or keep it in one int attribute, to prune "
                              f"these channels")


def _bind_product_factor(ctx: TraceContext, call: OpCall, source: Tensor, labels: Tensor,
                         src_dims: list[int], dim: int, state: dict[str, Any],
                         path: str) -> None:
    """A merged dim written as a product of the calling module's int attributes
    (``view(-1, self.num_fields * self.embed_dim)``, DeepFM's flattened field embeddings):
    the one factor whose value is the width of the one source dim that carries channels is
    bound to those channels and rewritten; the others count dims that do not change. Where
    no factor could be it, the channels are kept whole (the product would not follow them);
    where several could, nothing is bound here (heads merged back with ``h == d_k`` are
    judged where they split; otherwise the forward check finds a product that does not
    follow)."""
    written = products_written(ctx)
    if written is None or len(written) != labels.dim():
        return
    product = written[dim]
    if not (isinstance(product, tuple) and product and product[0] == "*"):
        return
    names = [pair[1] for pair in product[1:]]
    values = [value for value in (state.get(name) for name in names) if type(value) is int]
    src = ctx.space.find(ctx.labels(source))
    carrying = [d for d in src_dims if varies(src, d)]
    if len(carrying) != 1:  # heads merged back (self.num_heads * self.head_dim): each
        return  # factor is judged where the heads were split
    if len(values) == len(names) and math.prod(values) == labels.shape[dim]:
        width = source.shape[carrying[0]]
        matches = [name for name, value in zip(names, values, strict=True) if value == width]
        if len(matches) == 1:
            ctx.bind_attribute(path, matches[0], first_line(src, carrying[0]))
            return
        if matches:  # (h == d_k: each may be judged where it splits; else the check tells)
            return
    ctx.block(labels, f"{call.display} merges channels into a size written as a product of "
                      f"attributes ({' * '.join(names)}) of {running_module_phrase(ctx)}, "
                      f"none of which can be told to count them; write -1 for that dim to "
                      f"prune these channels")


def _reshape_vector(ctx: TraceContext, call: OpCall, source: Tensor) -> bool:
    """``_reshape`` for labels in vector form whose channel dim stays whole or merges with
    others into one dim (``flatten(1)``): the result is again a vector, each channel
    repeated over the positions merged with it, and no split needs checking (only one
    dim varies). False (nothing done) for any other reshape."""
    vector = ctx.vector_of(source)
    outs = tensors_in(call.out)
    if vector is None or len(outs) != 1 or any(
            isinstance(a, torch.dtype) for a in (*call.args[1:], *call.kwargs.values())):
        return False
    dim, roots = vector[0], ctx.space.find(vector[1])
    out = outs[0]
    for src_dims, out_dims in _segments(tuple(source.shape), tuple(out.shape)):
        if dim not in src_dims:
            continue
        if len(out_dims) != 1:
            return False
        before = math.prod(source.shape[d] for d in src_dims if d < dim)
        after = math.prod(source.shape[d] for d in src_dims if d > dim)
        merged = roots.reshape(1, -1, 1).expand(before, -1, after).reshape(-1)
        ctx.set_vector(out, merged, out_dims[0])
        return True
    return False


def _one_varying_factor(ctx: TraceContext, call: OpCall, labels: Tensor,
                        segment: list[int], dim: int) -> None:
    """A split whose labels vary along one factor only (one head, channels already tied
    across groups): every channel that leaves the segment leaves that factor, so its size
    must follow. It does when the call leaves it to -1 or writes a size read from a shape
    (``b, t, d = x.shape``; an attribute of equal value that the call does not name is left
    alone), when one int attribute of the running module holds it (``self.head_dim``,
    ``self.groups``: bound, then rewritten), when the code computes it from a shape read
    (``C // groups``; a leading ``in_channels`` read from the input, as MobileViT V2's
    unfolding and Mamba2's gated norm write it: judged by :mod:`prunekit.graph.sizes`), or,
    for the trailing factor, when a reshape's sizes do not line up with its dims. A factor
    of a size fixed in the code keeps its channels whole.

    Attributes are matched by value, so when the call writes the factor's size for another
    factor of the split too (``view(b, self.groups, c // self.groups)`` with 3 and 3), the
    attribute may size either: binding it could rewrite the wrong one, and not binding it
    would leave it stale if it sizes this one, so the channels are kept whole, unless the
    attribute's name says which factor it sizes (:func:`_named_for`)."""
    sizes = _sizes_by_dim(call, labels, segment)
    if (len(sizes) == labels.dim() and sizes[dim] == -1) or (
            dim == segment[-1] and _per_head_share(sizes, labels, segment)):
        return  # adapts by itself; C // heads: judged by the width read (graph/sizes.py)
    if _unflatten_attribute(ctx, call, labels, segment, dim) or _unflattened_by_minus_one(
            call, segment, dim):
        return
    size = labels.shape[dim]
    holders = holding(ctx, size)
    args = arguments_written(ctx)
    name = args[dim] if args is not None and len(args) == labels.dim() else None
    named = isinstance(name, str) and name in holders
    if named:  # view(b, l, self.num_heads, self.head_dim), both 8: the source says which
        holders = [str(name)]
    elif len(sizes) == labels.dim() and isinstance(sizes[dim], SizeInt):
        return  # read from a shape (b, t, d = x.shape): follows; an attribute of equal value
        # that the call does not name sizes something else (graph/sizes.py judges reads)
    if len(holders) == 1 and not named and _written_twice(sizes, labels, segment, dim) \
            and not _named_for(holders[0], dim, segment):
        _block_ambiguous(ctx, call, labels, size, holders[0])
        return
    if len(holders) == 1 and size in sizes:
        if not _read_elsewhere(ctx, call, labels, holders[0], dim):
            line = first_line(ctx.space.find(labels), dim)
            ctx.bind_attribute(ctx.path, holders[0], line)
        return
    trailing = all(labels.shape[d] == 1 for d in segment if d > dim)
    # a size computed from a shape read (c // groups: a SizeInt) follows, judged by
    # graph/sizes.py: trailing, or leading (Mamba2's gated norm: ``group_count =
    # last_dim // self.group_size``); one computed from attributes or literals (maxvit's
    # self.dim_head * 3) does not
    read = len(sizes) == labels.dim() and isinstance(sizes[dim], SizeInt)
    if not holders and (read or (trailing and len(sizes) != labels.dim())):
        return
    _block_fixed_factor(ctx, call, labels, size, holders)


def _unflatten_attribute(ctx: TraceContext, call: OpCall, labels: Tensor,
                         segment: list[int], dim: int) -> bool:
    """``x.unflatten(d, self.sizes)`` passes a tuple attribute of the running module as is
    (``nn.Unflatten``): found by identity, its element for the factor is bound
    (``unflattened_size[1]``) and rewritten with the channels kept, or nothing is needed
    where it is -1. False if the sizes are no such attribute."""
    owner = _sizes_attribute(ctx, call, segment)
    if owner is None:
        return False
    written, index = _unflatten_sizes(call, segment), dim - segment[0]
    if written is not None and written[index] != -1:
        ctx.bind_attribute(ctx.path, f"{owner}[{index}]", first_line(ctx.space.find(labels),
                                                                     dim))
    return True


def _unflattened_by_minus_one(call: OpCall, segment: list[int], dim: int) -> bool:
    """``x.unflatten(d, (-1, 2))``: the factor left to -1 adapts by itself (the sizes of an
    unflatten do not line up with the result's dims, so the reshape rule cannot see it)."""
    written = _unflatten_sizes(call, segment)
    return written is not None and written[dim - segment[0]] == -1


def _sizes_by_dim(call: OpCall, labels: Tensor, segment: list[int]) -> list[Any]:
    """The sizes the call writes, one per dim of its result: a reshape's arguments, or, for
    ``unflatten(d, sizes)``, the result's own sizes with the written ones at the factors
    ``segment`` (so that ``unflatten(1, (-1, 4))`` reads as ``view(B, -1, 4, H, W)``: the
    factor left to -1 shrinks, a literal 4 does not)."""
    written = _unflatten_sizes(call, segment)
    if written is None:
        return tensors_free(call.args[1:])
    sizes: list[Any] = list(labels.shape)
    sizes[segment[0]:segment[-1] + 1] = list(written)
    return sizes


def _unflatten_sizes(call: OpCall, segment: list[int]) -> tuple[Any, ...] | list[Any] | None:
    """The sizes an ``unflatten`` call writes for the factors ``segment`` of its result, or
    None for any other call."""
    written = call.arg(2, "sizes") if call.name == "unflatten" else None
    return written if isinstance(written, (tuple, list)) and len(written) == len(segment) \
        else None


def _sizes_attribute(ctx: TraceContext, call: OpCall, segment: list[int]) -> str | None:
    """The tuple attribute of the running module that an ``unflatten`` call passes as its
    sizes, by identity (``nn.Unflatten``'s ``unflattened_size``), or None."""
    written = _unflatten_sizes(call, segment)
    if written is None:
        return None
    return attribute_holding(vars(ctx.running_module), written)


def _read_elsewhere(ctx: TraceContext, call: OpCall, labels: Tensor, attr: str,
                    dim: int) -> bool:
    """Whether the call computes another factor from ``attr`` too (Point Transformer's
    ``view(n, k, self.out_planes // self.mid_planes, self.mid_planes)``): rewriting it for
    factor ``dim`` would change that one as well, so the channels are kept whole (True)."""
    reads = attributes_by_argument(ctx)
    sizes = tensors_free(call.args[1:])
    if reads is None or len(reads) != labels.dim() or len(sizes) != labels.dim() or not any(
            attr in names and not isinstance(sizes[d], SizeInt)
            for d, names in enumerate(reads) if d != dim):
        return False  # (``c // self.head_dim``, c read from a shape, follows by itself)
    ctx.block(labels, f"{call.display} sizes a factor by {attr!r} of "
                      f"{running_module_phrase(ctx)} and computes another factor from it "
                      f"too, so rewriting it would change both; write -1 for the other "
                      f"factor to prune these channels")
    return True


def _block_fixed_factor(ctx: TraceContext, call: OpCall, labels: Tensor, size: int,
                        holders: list[str]) -> None:
    """Keep whole the channels of a split whose factor of ``size`` the code fixes (a
    literal, a local from a config, an attribute that cannot be told from others)."""
    where = running_module_phrase(ctx)
    held = f" (held by {', '.join(holders)})" if holders else ""
    ctx.block(labels, f"{call.display} splits channels along a factor of {size}{held}, a "
                      f"size {where} fixes in its code; write -1 for it or keep it in one "
                      f"int attribute to prune these channels")


def _written_twice(sizes: list[int], labels: Tensor, segment: list[int], dim: int) -> bool:
    """True if the call writes the size of factor ``dim`` for another factor of its split
    ``segment`` too (every int written counts if ``sizes`` do not line up with the result's
    dims, as for unflatten). An attribute holding that size, matched by value, may then size
    either factor."""
    written = [sizes[d] for d in segment] if len(sizes) == labels.dim() else sizes
    return written.count(labels.shape[dim]) > 1


def _heads_with_batch(ctx: TraceContext, labels: Tensor, dim: int,
                      attrs: dict[str, int]) -> str | None:
    """The head count of a split whose leading factor merges the batch with the heads
    (fairseq's and Whisper's ``view(T, bsz * self.num_heads, self.head_dim)``): the one
    head-count attribute that factor's expression reads, where the factor is a whole
    number of batches of it and its labels repeat batch by batch. Whole heads then go."""
    reads = attributes_by_argument(ctx)
    if reads is None or len(reads) != labels.dim():
        return None
    heads = [k for k in reads[dim] if counts_heads(k) or k in SHORT_HEAD_COUNTS]
    count = attrs.get(heads[0], 0) if len(heads) == 1 else 0
    size = labels.shape[dim]
    if count < 2 or size <= count or size % count:
        return None
    line = first_line(labels, dim)
    return heads[0] if bool((line.view(-1, count) == line[:count]).all()) else None


def _named_for(attr: str, dim: int, segment: list[int]) -> bool:
    """True if ``attr``'s name says it sizes factor ``dim`` of a split: a per-head size
    (``head_dim``, ``head_size``) the last factor, a head count (``num_heads``) another."""
    if "head" not in attr:
        return False
    return (dim == segment[-1]) != counts_heads(attr)


def _block_ambiguous(ctx: TraceContext, call: OpCall, labels: Tensor, size: int,
                     holder: str) -> None:
    """Keep whole the channels of a split whose attribute may size either of two factors:
    binding it could rewrite the wrong one, and not binding it would leave it stale."""
    where = running_module_phrase(ctx)
    ctx.block(labels, f"{call.display} splits channels along a factor of {size}, and "
                      f"{holder!r} of {where} holds {size}, but the call writes "
                      f"{size} for another factor too, so which factor it sizes is unknown; "
                      f"write -1 for the factor that holds the channels to prune them")


def _shrinking_factor(ctx: TraceContext, call: OpCall, labels: Tensor, bearing: list[int],
                      segment: list[int]) -> tuple[int, str | None]:
    """Which factor of a split shrinks, and the module attribute that holds its size.

    ``nn.Unflatten(1, (C, H, W))`` (an unflatten into three factors or more, its sizes a
    tuple attribute) shrinks its first factor, whose element of the tuple is rewritten:
    channels of ``H·W`` features go whole, as flatten → Linear maps them the other way.
    A leading factor left to ``-1`` in the call, or written from a unique ``*head*``
    attribute of the running module (``self.num_heads``, ``self.num_key_value_heads``, which
    is then rewritten) shrinks: whole heads go.
    Otherwise the last factor shrinks (channel ``j`` of every group goes together, so a
    group count written in the code stays valid), and if its size is written in the call
    and held by one int attribute (``self.head_dim``), that attribute is rewritten; if the
    call writes that size for another factor too, only a per-head size's name
    (``head_dim``, ``head_size``: :func:`_named_for`) tells which it sizes, else the
    channels are kept whole; so are they where the call writes it as a plain int that no
    attribute holds."""
    owner = _sizes_attribute(ctx, call, segment) if len(segment) > 2 else None
    if owner is not None and bearing[0] == segment[0]:
        # nn.Unflatten(1, (C, H, W)), a decoder's stem: whole channels of H·W features go
        first = call.arg(2, "sizes")[0]
        return segment[0], None if first == -1 else f"{owner}[0]"
    sizes = _sizes_by_dim(call, labels, segment)
    attrs = int_attributes(ctx)
    args = arguments_written(ctx)
    if args is not None and len(args) != labels.dim():
        args = None
    if _per_head_share(sizes, labels, bearing):  # C // self.n_head: every head shrinks alike
        return bearing[-1], None
    if _blocks_of_literals(sizes, args, bearing):  # view(b, c // 4, 2, 2, h, w)
        return bearing[0], None
    if len(sizes) == labels.dim() and -1 in sizes:  # a factor left to -1 adapts by itself
        inferred = sizes.index(-1)
        if inferred in bearing[:-1] and _width_read(sizes[bearing[-1]]):
            # view(B, -1, d) with d = x.shape[1] (DLRM's interaction): the last factor is
            # a width read whole, so it shrinks with it, alike in every part
            return bearing[-1], None
        if inferred in bearing[:-1]:  # (a matching *head* attribute is kept truthful)
            heads = [k for k, v in attrs.items()
                     if v == labels.shape[inferred] and counts_heads(k)]
            _check_head_size(ctx, call, labels, bearing, inferred, sizes, attrs)
            return inferred, heads[0] if len(heads) == 1 else None
    written = set(sizes)
    for dim in bearing[:-1]:
        size = labels.shape[dim]
        heads = [k for k, v in attrs.items() if v == size and counts_heads(k)]
        at = args[dim] if args is not None else None
        if not heads and isinstance(at, str) and at in SHORT_HEAD_COUNTS and \
                attrs.get(at) == size:  # view(B, -1, self.h, self.d_k): ESPnet
            heads = [at]
        if args is not None and type(args[dim]) is int:
            continue  # a literal (the 3 of q/k/v in reshape(B, N, 3, self.num_heads, -1)
            # with 3 heads) is not the head count, whatever its value
        if heads and _count_read_elsewhere(ctx, at, attrs, size):
            continue  # read from a config or a constant: fixed, as a literal is
        if size in written and len(heads) == 1:
            _check_head_size(ctx, call, labels, bearing, dim, sizes, attrs)
            return dim, heads[0]
        merged = _heads_with_batch(ctx, labels, dim, attrs)
        if merged is not None:
            return dim, merged
    last = bearing[-1]
    size = labels.shape[last]
    holders = holding(ctx, size)
    if not holders and len(sizes) == labels.dim() and type(sizes[last]) is int and \
            sizes[last] == size and varying(labels) <= set(segment):
        # a plain int (funnel's d_head = self.config.d_head) splitting channels that vary
        # along the split alone (not BEiT's table rows gathered per head: its heads stay free)
        _block_fixed_factor(ctx, call, labels, size, holders)
        return last, None
    at = args[last] if args is not None else None
    # a factor followed by dims without channels must be written as the attribute holding
    # its size (involution's view(b, self.groups, self.group_channels, k * k, h, w))
    if size not in written or not holders or (last != labels.dim() - 1 and at not in holders):
        return last, None
    named = at if isinstance(at, str) and at in holders else None
    if named is not None:  # view(B, -1, self.h, self.d_k) with h == d_k: the call says
        holders = [named]
    if len(holders) > 1:
        holders = [k for k in holders if "head" in k and not counts_heads(k)] or holders
    if len(holders) > 1:
        where = running_module_phrase(ctx)
        ctx.block(labels, f"{call.display} splits channels by {size}, which several "
                          f"attributes of {where} hold ({', '.join(holders)}), so "
                          f"which one sizes the factor is unknown; write -1 for that "
                          f"factor, or keep its size in one int attribute (a per-head size "
                          f"named head_dim) to prune these channels")
        return last, None
    if _written_twice(sizes, labels, segment, last) and named is None and \
            not _named_for(holders[0], last, segment):
        _block_ambiguous(ctx, call, labels, size, holders[0])
        return last, None
    return last, holders[0]


def _count_read_elsewhere(ctx: TraceContext, at: str | int | None, attrs: dict[str, int],
                          size: int) -> bool:
    """Whether the call writes a factor of ``size`` (``at``: what it writes there, as
    :func:`arguments_written` gives it) read from something other than an int attribute of
    the module: ``self.config.num_attention_heads``, ``self.cfg["n_heads"]``, a global
    ``N_HEAD``. A module attribute of that value the call does not read (an unused
    ``self.num_heads``) is then not its size: rewriting it would leave the number the call
    reads at the old count, and the heads would be split anew."""
    if isinstance(at, str) and at not in attrs:
        return True
    found = size_read_elsewhere(ctx, size)
    return found is not None and (at is None or found.endswith((f".{at}", f"[{at!r}]")))


def _per_head_share(sizes: list[int], labels: Tensor, bearing: list[int]) -> bool:
    """Whether the per-head size is written as a width read from a tensor's shape divided
    by the head count before it (nanoGPT's ``view(B, T, self.n_head, C // self.n_head)``,
    torchvision Swin's ``C // num_heads``, ``C`` the block's input width). Heads cannot go
    (the width read would not shrink with them); the per-head size shrinks instead, alike
    in every head (the last factor shrinks), and :mod:`prunekit.graph.sizes` makes the
    width read shrink by as many channels per head."""
    if len(sizes) != labels.dim() or len(bearing) < 2:
        return False
    size, heads = sizes[bearing[-1]], labels.shape[bearing[-2]]
    return isinstance(size, SizeInt) and heads > 1 and size._divisor == heads


def _blocks_of_literals(sizes: list[int], args: tuple[str | int | None, ...] | None,
                        bearing: list[int]) -> bool:
    """Whether the leading factor is a width read from a shape divided by the product of
    the others, all literals written in the call (a hand-written pixel shuffle's ``view(b,
    c // 4, 2, 2, h, w)``): whole blocks of ``2·2`` channels go, and ``c // 4`` follows by
    itself. (Where an attribute sizes the others, ``view(b, t, c // self.head_dim,
    self.head_dim)``, the per-head size shrinks instead, and the attribute is rewritten.)"""
    if args is None or len(sizes) != len(args) or len(bearing) < 2:
        return False
    size = sizes[bearing[0]]
    if not isinstance(size, SizeInt) or size._divisor is None or size._divisor < 2:
        return False
    rest = [r for r in (args[d] for d in bearing[1:]) if type(r) is int and r > 0]
    return len(rest) == len(bearing) - 1 and size._divisor == math.prod(rest)


def _width_read(size: int) -> bool:
    """Whether ``size`` is a tensor's width read whole from its shape (``d`` of ``B, d =
    x.shape``), not divided or combined: it follows that tensor's channels."""
    return isinstance(size, SizeInt) and size._exact and len(size._parts) == 1


def _check_head_size(ctx: TraceContext, call: OpCall, labels: Tensor, bearing: list[int],
                     count_dim: int, sizes: list[int], attrs: dict[str, int]) -> None:
    """Whole heads (the factor at ``count_dim``) may go only if the per-head size stays what
    it is: the last factor (after the head count) must be left to -1, held by an int
    attribute (``self.head_dim``) or written as a literal (the ``2`` of complex pairs; also
    ``self.head_dim * 2``). A size computed in the code (``C // self.n_head``, ``C`` read
    from the input) would follow the head count or the input width, so the heads are kept
    whole — and, when the heads span exactly the width read by their projection, that
    projection's input width too (the factors from any one up to the per-head size: Swin's
    fused ``(3, heads, C // heads)`` spans three inputs, its heads one). Factors between the
    two (Bloom's ``(heads, 3, head_dim)``) are counts that stay. A head count attribute does
    not hold a per-head size, even of equal value (nanoGPT's ``C // self.n_head`` with 4
    heads of 4)."""
    last = bearing[-1]
    held = {v for k, v in attrs.items() if not counts_heads(k)}
    adapts = sizes[last] == -1 if len(sizes) == labels.dim() else -1 in sizes
    if last <= count_dim or adapts or labels.shape[last] in held or \
            _written_as_literal(ctx, sizes, attrs, labels, last):
        return
    if call.name == "unflatten" and type(sizes[last]) is int:  # a plain int in its sizes
        return  # (nn.Unflatten(1, (-1, 4)), a local k): no shape read, so it stays
    where = running_module_phrase(ctx)
    reason = (f"{call.display} splits channels into heads of {labels.shape[last]}, a size "
              f"that no int attribute of {where} holds (computed in the code, e.g. "
              f"C // self.n_head?), so it would change when heads or the input width shrink; "
              f"store it as self.head_dim or write -1 to prune heads")
    widths = {math.prod(labels.shape[d] for d in bearing if d >= start)
              for start in bearing[:-1]}
    for inputs in _producer_inputs(ctx, labels):
        if inputs.numel() in widths:
            ctx.block(inputs, reason)
    ctx.block(labels, reason)


def _written_as_literal(ctx: TraceContext, sizes: list[int], attrs: dict[str, int],
                        labels: Tensor, dim: int) -> bool:
    """Whether the call writes factor ``dim``'s size as an int literal (the pairs of
    ``reshape(*x.shape[:-1], -1, 2)`` that complex rotary embeddings make), or, for the last
    factor, as an attribute the call reads times a literal (Qwen3-Next's and Qwen3.5's
    ``self.head_dim * 2``: query and gate side by side in each head): a size no pruning
    changes, not one computed from a width."""
    size = labels.shape[dim]
    args = arguments_written(ctx)
    if args is not None and len(args) == labels.dim() and args[dim] is not None:
        return type(args[dim]) is int and args[dim] == size
    if args is not None and len(args) == labels.dim() and dim != labels.dim() - 1:
        # an attribute times a literal written for that factor alone (EfficientViT's
        # reshape(qkv, (B, -1, 3 * self.dim, H * W)): q, k and v of a head side by side)
        reads = attributes_by_argument(ctx)
        names = reads[dim] if reads is not None and len(reads) == len(args) else frozenset()
        return any(not counts_heads(name)
                   for name in scaled_reads(attrs, names, literals_written(ctx), size))
    if dim != labels.dim() - 1 or not sizes or type(sizes[-1]) is not int or sizes[-1] != size:
        return False
    literals = literals_written(ctx)
    # (a bare literal only where ``*x.shape[:-1]`` unpacked hides the arguments)
    return (args is None and size in literals) or any(
        not counts_heads(name) for name in scaled_reads(attrs, attributes_read(ctx), literals,
                                                        size))


def _check_fixed_split(ctx: TraceContext, call: OpCall, labels: Tensor,
                       segment: list[int], outside: set[int]) -> None:
    """A split of channels already kept whole (Swin V2's fused q/k/v output, whose bias is
    sliced) by a last factor that is neither -1 nor held by an int attribute: that size is
    computed in the code, perhaps from the producing layer's input width (``C //
    num_heads``), so, as in :func:`_check_head_size`, that input is kept whole where the
    factors from any one up to the last span it. Not for a producer whose output width is
    the size of a dim the split leaves alone (``outside``: the sizes of the source dims
    outside it): its channels are there, and the split is of tokens (a window of 4 tokens,
    ``x.view(B * L // 4, 4, C)``, where ``B · L`` happened to equal a layer's input width)."""
    if not ctx.space.one_blocked_class(labels):
        return
    sizes = tensors_free(call.args[1:])
    last = segment[-1]
    adapts = sizes[last] == -1 if len(sizes) == labels.dim() else -1 in sizes
    held = set(int_attributes(ctx).values())
    if adapts or labels.shape[last] in held:
        return
    widths = {math.prod(labels.shape[d] for d in segment if d >= start)
              for start in segment[:-1]}
    reason = (f"{call.display} splits channels kept whole into parts of "
              f"{labels.shape[last]}, a size that no int attribute of "
              f"{running_module_phrase(ctx)} holds (computed in the code from the input "
              f"width?); store it in an attribute or write -1 to prune the input")
    for made, inputs in _producers(ctx, labels):
        if inputs.numel() in widths and made.numel() not in outside:
            ctx.block(inputs, reason)


def _producer_inputs(ctx: TraceContext, labels: Tensor) -> list[Tensor]:
    """The input channel labels of the layers whose outputs ``labels`` carry: modules, and
    parameters used as a layer weight (Swin's ``F.linear(x, self.qkv.weight, ...)``)."""
    return [inputs for _, inputs in _producers(ctx, labels)]


def _producers(ctx: TraceContext, labels: Tensor) -> list[tuple[Tensor, Tensor]]:
    """(output, input) channel labels of the layers :func:`_producer_inputs` finds."""
    roots = ctx.space.roots(labels)
    pairs = [(r.dims["out"].labels, r.dims["in"].labels) for r in ctx.modules.values()
             if "out" in r.dims and "in" in r.dims]
    for param in ctx.params.values():  # the axis with fresh ids is the output's
        made = [labels for labels, root in param.axes.values() if root]
        read = [labels for labels, root in param.axes.values() if not root]
        if len(made) == 1 and len(read) == 1:
            pairs.append((made[0], read[0]))
    return [(out, inp) for out, inp in pairs
            if bool(torch.isin(ctx.space.find(out), roots).any())]


def _merges_heads(name: str) -> bool:
    """``all_head_size``, ``inner_dim``, timm's ``attn_dim`` and ``val_attn_dim`` (LeViT,
    EfficientFormer): the width of all heads side by side (not a per-head size such as
    ``attention_head_size``)."""
    return "all_head" in name or "inner" in name or "attn_dim" in name or (
        name.startswith(("attn", "attention")) and "head" not in name)


def _segments(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Group the dims of a reshape into runs of equal element count: (src dims, dst dims)."""
    out: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) and j < len(dst):
        si, sj = [i], [j]
        pi, pj = src[i], dst[j]
        while pi != pj:
            if pi < pj and i + 1 < len(src):
                i += 1
                pi *= src[i]
                si.append(i)
            elif j + 1 < len(dst):
                j += 1
                pj *= dst[j]
                sj.append(j)
            else:
                return out
        out.append((si, sj))
        i += 1
        j += 1
    return out


register_op(RESHAPE, _reshape)
