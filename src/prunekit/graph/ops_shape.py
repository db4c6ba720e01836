"""Shape ops: the op itself is replayed on the label tensor, so concat offsets, permutes
and stacks map indices exactly as they map data (reshapes: :mod:`prunekit.graph.ops_reshape`).

These rules keep the replay sound after channels are removed:

* ``chunk`` couples the pieces index by index, so all pieces shrink alike; so does a
  ``split`` into equal parts whose width one int attribute of the running module holds
  (a fused q/k/v projection, ``c_attn(x).split(self.split_size, 2)``), and that attribute
  is rewritten;
* a ``split`` into unequal parts follows pruning part by part where the call writes each
  part's size as an int attribute of the module (Mamba2's ``split([self.intermediate_size,
  self.conv_dim, self.num_heads])``), and those attributes are rewritten;
* a ``split`` by a literal or a computed size keeps those channels whole, since the sizes
  written in the code would no longer match (so does a fixed-size selection,
  ``x[:, :32]``, ``narrow``, ``unbind``: :mod:`prunekit.graph.ops_slice`);
* ``roll``, ``tril`` and ``triu`` along a dim that carries channels keep those channels
  whole: the shift or the diagonal would count positions among the kept channels only.

Attributes are matched by value, so a literal that happens to equal one is taken for it:
the forward check after surgery then fails loudly, and the user's model is left as it was.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from prunekit.graph.callers import (
    attributes_read,
    calling_module,
    literals_written,
    size_read_elsewhere,
    sizes_written,
)
from prunekit.graph.labels import NEUTRAL, as_line, rep_along, varies, varying
from prunekit.graph.ops import OpCall, OpNotMappable, on_cpu, register_op, tensors_in
from prunekit.graph.ops_factory import expanded_by_attribute
from prunekit.graph.sizes import (
    SizeInt,
    channel_line,
    split_arg,
    split_sizes,
    without_channels,
)
from prunekit.graph.trace import TraceContext

REPLAY = (
    "permute", "transpose", "t", "T", "mT", "H", "mH", "swapaxes", "swapdims", "movedim",
    "moveaxis", "squeeze", "unsqueeze", "expand", "expand_as", "repeat", "tile",
    "repeat_interleave", "roll", "flip", "fliplr", "flipud", "stack", "hstack", "vstack",
    "cat", "concat", "concatenate", "broadcast_to", "atleast_2d",
    "diag_embed", "tril", "triu", "rot90",
)
CHUNKING = ("chunk", "split", "split_with_sizes")


def _replace_first(call: OpCall, ctx: TraceContext, partial: bool = False
                   ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with the data tensor(s) in the first position swapped for labels."""

    def swap(value: Any) -> Any:
        if isinstance(value, Tensor):
            return ctx.space.find(ctx.labels(value, partial=partial))
        if isinstance(value, (list, tuple)):
            return type(value)(swap(v) for v in value)
        return value

    # the other arguments (index tensors, repeats) may be on the model's GPU
    if call.args:
        return (swap(call.args[0]), *on_cpu(call.args[1:])), on_cpu(call.kwargs)
    key = "tensors" if "tensors" in call.kwargs else "input"
    return (), {**on_cpu(call.kwargs), key: swap(call.kwargs[key])}


def replay(ctx: TraceContext, call: OpCall, partial: bool = False) -> Any:
    args, kwargs = _replace_first(call, ctx, partial)
    try:
        result = call.func(*args, **kwargs)
    except RuntimeError:  # view() of a broadcast label tensor: retry on a dense copy
        args = tuple(a.contiguous() if isinstance(a, Tensor) else a for a in args)
        try:
            result = call.func(*args, **kwargs)
        except (RuntimeError, TypeError, IndexError) as exc:
            raise OpNotMappable(f"replaying it on labels failed: {exc}") from exc
    except (TypeError, IndexError) as exc:
        raise OpNotMappable(f"replaying it on labels failed: {exc}") from exc
    outs, labs = tensors_in(call.out), tensors_in(result)
    if len(outs) != len(labs):
        raise OpNotMappable("replaying it on labels gave a different structure")
    for tensor, labels in zip(outs, labs, strict=True):
        ctx.set_labels(tensor, labels)
    return result


def _replay_only(ctx: TraceContext, call: OpCall) -> None:
    if call.name in {"cat", "concat", "concatenate"}:
        if _cat_vectors(ctx, call):
            return
        replay(ctx, call)
        _join_cat_parts(ctx, call)
        return
    if call.name in _MOVES and _move_vector(ctx, call):
        return
    if call.name in _TRANSPOSES and _defer_weight_transpose(ctx, call):
        return
    if call.name in ("squeeze", "unsqueeze") and defer_same_view(ctx, call):
        return
    if call.name in _POSITIONAL:
        _keep_positional_whole(ctx, call)
    elif call.name == "repeat_interleave":
        _keep_counted_whole(ctx, call)
    replay(ctx, call)
    if call.name == "expand_as":
        _follow_other(ctx, call)
    elif call.name in ("expand", "repeat"):
        expanded_by_attribute(ctx, call)


def _follow_other(ctx: TraceContext, call: OpCall) -> None:
    """``t.expand_as(x)`` of a tensor without channels (a count per row, as PyG's mean
    aggregation divides by): a dim it repeats to ``x``'s width follows ``x``'s channels,
    as ``expand(x.shape)`` does, instead of meeting them at a fixed size."""
    source = call.args[0] if call.args else call.kwargs.get("input")
    other = call.args[1] if len(call.args) > 1 else call.kwargs.get("other")
    out = tensors_in(call.out)[0]
    if not (isinstance(source, Tensor) and isinstance(other, Tensor)) or \
            not ctx.is_tracked(other) or not without_channels(ctx, ctx.labels(source)):
        return
    found = as_line(ctx.space.find(ctx.labels(other)))
    if found is None:
        return
    dim, line = found
    at = dim - (out.dim() - source.dim())
    if at < 0 or source.shape[at] == 1:
        ctx.set_vector(out, line, dim)


# ops whose result at a position depends on the position itself along some dims: rolling
# by a fixed shift, zeroing above or below a diagonal
_POSITIONAL = {"roll", "tril", "triu"}


def _keep_positional_whole(ctx: TraceContext, call: OpCall) -> None:
    """``roll`` along a dim that carries channels would move each kept channel by the shift
    among the kept ones, not among all, handing the next layer's weights the wrong channels;
    ``tril``/``triu`` over such a dim would zero other elements once channels go. Those
    channels are kept whole (rolling over spatial dims, as Swin does, is replayed)."""
    source = call.args[0] if call.args else call.kwargs.get("input")
    if not isinstance(source, Tensor) or source.dim() == 0:
        return
    if call.name == "roll":
        dims: Any = call.arg(2, "dims")
        if dims is None:  # the flattened tensor is rolled: every dim moves
            dims = range(source.dim())
        dims = {d % source.dim() for d in ((dims,) if isinstance(dims, int) else dims)}
    else:
        dims = {source.dim() - 2, source.dim() - 1} if source.dim() > 1 else {0}
    if dims & _channel_dims(ctx, source):
        ctx.block(ctx.labels(source), f"{call.display} moves or zeroes elements by position "
                                      f"along a dim that carries channels, which removing "
                                      f"channels would shift")


def _keep_counted_whole(ctx: TraceContext, call: OpCall) -> None:
    """``x.repeat_interleave(counts, dim)`` with one count per channel (a tensor): the
    counts keep their length when channels go, so those channels are kept whole."""
    source = call.args[0] if call.args else call.kwargs.get("input")
    counts = call.arg(1, "repeats")
    if not isinstance(source, Tensor) or not isinstance(counts, Tensor) or \
            counts.numel() <= 1 or source.dim() == 0:
        return
    dim = call.arg(2, "dim")
    along = _channel_dims(ctx, source)
    if (dim is None and along) or (isinstance(dim, int) and dim % source.dim() in along):
        ctx.block(ctx.labels(source), f"{call.display} repeats each channel by its own count "
                                      f"from a tensor whose length no pruning changes")


_TRANSPOSES = {"t", "T", "mT", "transpose", "swapaxes", "swapdims", "permute"}


def _defer_weight_transpose(ctx: TraceContext, call: OpCall) -> bool:
    """``W.t()`` of a 2-D parameter, or ``W.transpose(-2, -1)`` of a 3-D stack of expert
    weights: left for a (grouped) matrix product to take as a layer weight (``x @
    self.weight.t()``, a hand-written linear; ``grouped_mm(x, self.gate_up_proj.mT, ...)``);
    labelled like a replay if anything else reads it. False (nothing done) for any other
    call."""
    source = call.args[0] if call.args else call.kwargs.get("input")
    out = call.out
    if not (isinstance(source, Tensor) and isinstance(out, Tensor) and source.dim() in (2, 3)
            and _swaps_last_two(source, out)):
        return False
    stack = ctx.param_views.weight(source, "pick") if source.dim() == 2 else None
    if stack is not None:  # W[i].t() of a stack of layer weights (DCN-v2's cross layers)
        ctx.param_views.defer(out, stack, "pick_t", lambda partial: ctx.set_labels(
            out, ctx.labels(source, partial=partial).transpose(-2, -1)))
        return True
    if not ctx.is_param(source):
        return False
    ctx.param_views.defer(out, source, "t", lambda partial: ctx.set_labels(
        out, ctx.labels(source, partial=partial).transpose(-2, -1)))
    return True


def defer_same_view(ctx: TraceContext, call: OpCall) -> bool:
    """``W.squeeze(1)`` of a parameter, or ``.unsqueeze(1)`` of that, or a view, reshape or
    ``W[:, :, None, None]`` that only adds or drops dims of size 1: the same elements in the
    same layout. Left for a layer to take as its weight where the view has the parameter's
    shape again (Transformers' Mamba runs ``F.conv1d(x, conv1d.weight.squeeze(1).unsqueeze(1),
    groups=C)``), or the parameter's with 1s after it (Glow's ``F.conv2d(x,
    self.weight.view(c, c, 1, 1))``); labelled like a replay if anything else reads it. False
    (nothing done) for any other call."""
    source = call.args[0] if call.args else call.kwargs.get("input")
    out = call.out
    if not isinstance(source, Tensor) or not isinstance(out, Tensor):
        return False
    root = ctx.same_as_param(source)
    if root is None or not _same_layout(root, out):
        return False
    ctx.param_views.defer(out, root, "same", lambda partial: replay(ctx, call))
    return True


def kernel_view(call: OpCall) -> bool:
    """Whether ``call`` (a view, reshape or getitem) makes a matrix or kernel of its source
    with dims of size 1 after them (``W.view(c, c, 1, 1)``, ``W[:, :, None, None]``): the
    calls :func:`defer_same_view` may leave for a conv to take. A vector's view (a scale's
    ``view(self.shape)``) is read as it is, its sizes judged."""
    source, out = call.args[0] if call.args else None, call.out
    return isinstance(source, Tensor) and isinstance(out, Tensor) and source.dim() >= 2 and \
        ones_after(source, out)


def ones_after(root: Tensor, view: Tensor) -> bool:
    """Whether ``view``'s shape is ``root``'s with dims of size 1 after it."""
    rank = root.dim()
    return view.dim() > rank and view.shape[:rank] == root.shape and \
        all(size == 1 for size in view.shape[rank:])


def _same_layout(root: Tensor, view: Tensor) -> bool:
    """Whether ``view`` holds ``root``'s elements in ``root``'s order and strides (its dims
    of size 1 aside)."""
    def wide(t: Tensor) -> list[tuple[int, int]]:
        return [(size, stride) for size, stride in zip(t.shape, t.stride(), strict=True)
                if size != 1]
    return view.numel() == root.numel() and view.data_ptr() == root.data_ptr() and \
        wide(view) == wide(root)


def _swaps_last_two(source: Tensor, out: Tensor) -> bool:
    """Whether ``out`` is ``source`` with its last two dims swapped (by shape and strides,
    not any call that keeps a square weight's shape, such as ``permute(0, 1)``)."""
    size, stride = source.shape, source.stride()
    return (out.shape == (*size[:-2], size[-1], size[-2])
            and out.stride() == (*stride[:-2], stride[-1], stride[-2])
            and out.stride() != stride)


def _cat_args(call: OpCall) -> tuple[Any, Any]:
    """(tensors, dim) of a ``cat`` call, positional or keyword."""
    parts = call.args[0] if call.args else call.kwargs.get("tensors")
    return parts, call.args[1] if len(call.args) > 1 else call.kwargs.get("dim", 0)


def first_line(labels: Tensor, dim: int) -> Tensor:
    """The labels along ``dim`` at index 0 of every other dim (a 1-D view)."""
    return labels.movedim(dim, -1).reshape(-1, labels.shape[dim])[0]


def _join_cat_parts(ctx: TraceContext, call: OpCall) -> None:
    """The parts of a ``cat`` keep equal sizes on every other dim: where the parts' labels
    vary along one such dim only (channels of feature maps stacked along H, a class token
    before the tokens), index ``i`` of it leaves all parts together, and a part of fixed
    width (constant labels: blocked, or untracked) holds the others' width. (A consumer that
    joins positions, a conv or a norm, would join them too; one that does not, flatten into
    a Linear, would otherwise cut the parts apart.)"""
    parts, dim = _cat_args(call)
    if not isinstance(parts, (list, tuple)) or len(parts) < 2 or not isinstance(dim, int) \
            or not all(isinstance(p, Tensor) and p.numel() > 0 for p in parts) \
            or len({p.dim() for p in parts}) != 1:  # (cat takes legacy empty 1-D parts)
        return
    canons = [ctx.space.find(ctx.labels(part)) for part in parts]
    along = set().union(*map(varying, canons)) - {dim % canons[0].dim()}
    if len(along) != 1:
        return
    (line_dim,) = along
    lines = [first_line(canon, line_dim) for canon in canons]
    for line in lines[1:]:
        ctx.space.union(lines[0], line)


_MOVES = {"transpose", "swapaxes", "swapdims", "permute"}


def _move_vector(ctx: TraceContext, call: OpCall) -> bool:
    """``transpose``/``permute`` of labels in vector form: the replay only moves the vector's
    dim (positional dims only; False, nothing done, for any other call)."""
    source = call.args[0] if call.args else None
    outs = tensors_in(call.out)
    if not isinstance(source, Tensor) or call.kwargs or len(outs) != 1:
        return False
    vector = ctx.vector_of(source)
    ndim = source.dim()
    dims = call.args[1:]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if vector is None or ndim == 0 or outs[0].dim() != ndim or not all(
            isinstance(d, int) for d in dims):
        return False
    old = vector[0]
    moved = [d % ndim for d in dims]
    if call.name == "permute":
        if sorted(moved) != list(range(ndim)):
            return False
        new = moved.index(old)
    elif len(moved) == 2:
        new = moved[1] if old == moved[0] else moved[0] if old == moved[1] else old
    else:
        return False
    ctx.set_vector(outs[0], ctx.space.find(vector[1]), new)
    return True


def _cat_vectors(ctx: TraceContext, call: OpCall) -> bool:
    """``cat`` along the channel dim of tensors whose labels are vectors along it: the
    replay concatenates the vectors' roots. False (nothing done) for any other call."""
    parts, dim = _cat_args(call)
    outs = tensors_in(call.out)
    if not isinstance(parts, (list, tuple)) or not parts or len(outs) != 1 or (
            set(call.kwargs) - {"tensors", "dim"}):  # (axis=, out=: left to the replay)
        return False
    out = outs[0]
    if not isinstance(dim, int) or out.dim() == 0:
        return False
    dim %= out.dim()
    vectors = []
    for part in parts:
        vector = ctx.vector_of(part) if isinstance(part, Tensor) else None
        if vector is None or vector[0] != dim or part.dim() != out.dim():
            return False
        vectors.append(ctx.space.find(vector[1]))
    ctx.set_vector(out, torch.cat(vectors), dim)
    return True


def tensors_free(values: tuple[Any, ...]) -> list[int]:
    """Every int written in ``values`` (nested tuples/lists/Size included)."""
    out: list[int] = []
    for value in values:
        if isinstance(value, (tuple, list)):
            out.extend(tensors_free(tuple(value)))
        elif isinstance(value, int) and not isinstance(value, bool):
            out.append(value)
    return out


def chunking(ctx: TraceContext, call: OpCall) -> None:
    source = tensors_in(call.args[:1])[0]
    dim = call.args[2] if len(call.args) > 2 else call.kwargs.get("dim", 0)
    dim = dim % source.dim()
    vector = ctx.vector_of(source)
    outs = tensors_in(call.out)
    if vector is not None and all(out.dim() == source.dim() for out in outs) and sum(
            out.shape[dim] for out in outs) == source.shape[dim]:
        # labels in vector form: the pieces' labels are consecutive slices of the vector
        # (all of it, split along another dim: nothing varies there, nothing to check);
        # the checks below then read the 1-D roots, which vary as the labels do along dim
        roots = ctx.space.find(vector[1])
        if vector[0] != dim:
            for out in outs:
                ctx.set_vector(out, roots, vector[0])
            return
        pieces = list(roots.split([out.shape[dim] for out in outs]))
        for out, piece in zip(outs, pieces, strict=True):
            ctx.set_vector(out, piece, dim)
        canon, dim = roots, 0
    else:
        pieces = tensors_in(replay(ctx, call))
        canon = ctx.space.find(ctx.labels(source))
    if not varies(canon, dim) or len(pieces) < 2:
        return
    widths = {p.shape[dim] for p in pieces}
    if len(widths) != 1:
        _unequal_split(ctx, call, canon, pieces, dim)
        return
    attr = None
    if not counted(call) and not _own_share(ctx, call, canon, dim, len(pieces)):
        attr, why = _split_attribute(ctx, call, widths.pop())
        if attr is None:
            ctx.block(canon, why)
            return
    first = ctx.space.find(pieces[0])
    for piece in pieces[1:]:  # pieces shrink alike: couple them index by index
        ctx.space.union(first, ctx.space.find(piece))
    if attr is not None:  # the split size is rewritten to the new width of one part
        line = first_line(ctx.space.find(first), dim)
        ctx.bind_attribute(ctx.path, attr, line)


def attribute_holding(state: dict[str, Any], value: object) -> str | None:
    """The name under which ``state`` (a module's ``vars``) holds ``value`` itself, by
    identity (a tuple of equal value built in the code is not it), else None."""
    return next((name for name, held in state.items() if held is value), None)


def _split_sizes_attribute(held: dict[str, Any], call: OpCall) -> str | None:
    """The tuple or list attribute (of ints) that ``call`` passes whole as its part sizes."""
    sizes = split_arg(call)
    if not isinstance(sizes, (tuple, list)) or not all(type(v) is int for v in sizes):
        return None
    return attribute_holding(held, sizes)


def counted(call: OpCall) -> bool:
    """Whether ``call`` splits into a number of parts rather than at sizes: ``chunk(n)``,
    ``tensor_split(n)`` (an int count, not a list of indices)."""
    if call.name == "tensor_split":
        sections = call.arg(1, "sections", call.kwargs.get("indices_or_sections"))
        return isinstance(sections, int)
    return call.name == "chunk"


def _unequal_split(ctx: TraceContext, call: OpCall, canon: Tensor, pieces: list[Tensor],
                   dim: int) -> None:
    """A split into unequal parts, each judged by what the call's source writes for its
    size. A part written as an int attribute of the module whose code made the call, holding
    its width, follows pruning: the attribute is bound to the part's channels and rewritten
    (Mamba2's ``zxbcdt.split([self.intermediate_size, self.conv_dim, self.num_heads])``);
    parts written as the same attribute shrink alike. A part written as a product of int
    attributes (``self.n_groups * self.state_size``) is judged when the trace ends
    (:func:`_judge_products`). A part whose size is an int read from a shape is judged by
    :mod:`prunekit.graph.sizes` (FocalNet's ``split((C, C, self.focal_level + 1), 1)``: the
    two parts of the input width ``C`` follow it). A part written otherwise (a literal, a
    computed size) keeps its width, as does every part where the sizes are not written as
    a list in the call."""
    path, module = calling_module(ctx)
    written = sizes_written(module) if not counted(call) else None
    held = vars(module)
    owner = None if written is not None or counted(call) else _split_sizes_attribute(held, call)
    if owner is not None:  # InceptionNeXt's split(x, self.split_indexes, dim=1): its elements
        sizes = held[owner]
        written = tuple(f"{owner}[{i}]" for i in range(len(sizes)))
        held = {**held, **dict(zip(written, sizes, strict=True))}
    if written is None or len(written) != len(pieces):
        ctx.block(canon, f"{call.display} splits a channel dimension into unequal parts at "
                         f"sizes fixed in the code")
        return
    bound: dict[str, Tensor] = {}
    fixed: list[Tensor] = []
    products: list[tuple[Tensor, tuple[str, ...]]] = []
    factors: list[tuple[str, ...]] = []  # products of fixed parts
    values = split_sizes(call) or [None] * len(pieces)
    for name, piece, value in zip(written, pieces, values, strict=True):
        if isinstance(value, SizeInt):  # a width read from a shape: judged by graph/sizes.py
            continue
        piece = ctx.space.find(piece)
        if isinstance(name, tuple):
            if _product_may_follow(held, name, piece.shape[dim]) and varies(piece, dim):
                products.append((first_line(piece, dim), name))
            else:
                fixed.append(piece)
                factors.append(name)
            continue
        value = held.get(name) if isinstance(name, str) else None
        if not isinstance(name, str) or type(value) is not int or value != piece.shape[dim]:
            fixed.append(piece)
        elif name in bound:
            ctx.space.union(bound[name], piece)  # two parts of one size shrink alike
        elif varies(piece, dim) or _one_channel(piece, dim):
            bound[name] = piece
            ctx.bind_attribute(path, name, first_line(piece, dim))
    if products:
        ctx.at_end.append(lambda: _judge_products(ctx, call, path, products))
    if factors:
        ctx.at_end.append(lambda: _hold_factors(ctx, call, path, factors))
    widths = ", ".join(str(piece.shape[dim]) for piece in fixed)
    where = f"module {path!r}" if path else "the model"
    for piece in fixed:
        ctx.block(piece, f"{call.display} splits a channel dimension into unequal parts, and "
                         f"the code writes the size of some ({widths}) as no int attribute "
                         f"of {where} (a literal or a computed size), so "
                         f"they keep their width; hold each in an int attribute to prune it")


def _one_channel(piece: Tensor, dim: int) -> bool:
    """Whether a part of a split is one channel wide along ``dim`` and that channel is all
    it holds (EfficientViT's ``split([self.key_dim, self.key_dim, self.val_dim])`` once a
    prune left ``key_dim`` at 1): bound to its attribute, the allocation keeps that channel
    (a part left with none could not run); a part whose elements vary along another dim
    (one channel per head of whole heads) is not one."""
    if piece.shape[dim] != 1 or not piece.numel():
        return False
    low = int(piece.min())
    return low == int(piece.max()) and low != NEUTRAL


def counts_heads(name: str) -> bool:
    """``num_heads``, ``n_head``, ``num_key_value_heads``, and a count of groups of heads
    (Mamba2's ``n_groups`` of B and C, ``num_groups``) — not ``head_dim``/``head_size``,
    Transformer-XL's ``d_head``, ``channels_per_head``, nor ``num_key_value_groups`` (query
    heads per key/value head)."""
    if "group" in name:
        return name.endswith(("n_groups", "num_groups", "ngroups")) and "key_value" not in name
    return "head" in name and "dim" not in name and "size" not in name and \
        _PER_HEAD.search(name) is None


SHORT_HEAD_COUNTS = frozenset({"h", "H", "nh", "n_h"})
"""Names too short for :func:`counts_heads` that count heads where a view writes them as
a leading factor of a split (ESPnet's, WeNet's and the Annotated Transformer's ``view(B,
-1, self.h, self.d_k)``); elsewhere ``h`` may be a height."""

_PER_HEAD = re.compile(r"(^|_)d_?heads?$|per_heads?$")  # d_head, dhead, channels_per_head


def _product_may_follow(held: dict[str, Any], names: tuple[str, ...], width: int) -> bool:
    """Whether a part written as the product of the attributes ``names`` (their values in
    ``held``) may follow pruning: int values that multiply to ``width``, exactly one of them
    a count of groups of heads (:func:`counts_heads`) above 1."""
    values = [held.get(name) for name in names]
    ints = [v for v in values if type(v) is int]
    if len(ints) != len(values) or math.prod(ints) != width:
        return False
    counts = [v for name, v in zip(names, ints, strict=True) if counts_heads(name)]
    return len(counts) == 1 and counts[0] > 1


def _judge_products(ctx: TraceContext, call: OpCall, path: str,
                    products: list[tuple[Tensor, tuple[str, ...]]]) -> None:
    """At the trace's end, each part of an unequal split written as a product of int
    attributes (Mamba2's ``self.n_groups * self.ssm_state_size``): it follows pruning where
    exactly one factor is bound elsewhere in the trace (the ``view(b, l, self.n_groups,
    self.ssm_state_size)`` that splits B into groups) and the part's channels already go in
    whole blocks of the other factors, block ``i`` with the bound factor's unit ``i``: the
    bound attribute is rewritten, and the product stays the part's width. Otherwise the
    part keeps its width."""
    space = ctx.space
    for line, names in products:
        line = space.find(line)
        follows = [name for name in names if (path, name) in ctx.bindings]
        if len(follows) == 1:
            units = space.find(ctx.bindings[(path, follows[0])])
            if line.numel() % max(units.numel(), 1) == 0 and bool(
                    (line.view(units.numel(), -1) == units[:, None]).all()):
                continue
        why = (f"{call.display} splits a channel dimension into unequal parts, and the code "
               f"writes the size of one ({line.numel()}) as the product "
               f"{' * '.join(names)} of module {path!r}, whose channels do not go in whole "
               f"blocks of one factor that pruning rewrites, so they keep their width")
        ctx.block(line, why)
        _hold_factors(ctx, call, path, [names])


def _hold_factors(ctx: TraceContext, call: OpCall, path: str,
                  products: list[tuple[str, ...]]) -> None:
    """At the trace's end: a part of an unequal split that keeps its width, written as a
    product of int attributes, keeps it only if none of them is rewritten. LeViT's
    ``split([self.key_dim, self.key_dim, self.attention_ratio * self.key_dim])`` at one
    head binds ``key_dim`` to the query and key parts; cutting them would shrink the value
    part too, which keeps its channels. The channels bound to such a factor are kept whole."""
    for names in products:
        for name in names:
            bound = ctx.bindings.get((path, name))
            if bound is not None:
                ctx.block(bound, f"{call.display} splits a channel dimension into unequal "
                                 f"parts, one written as the product {' * '.join(names)} of "
                                 f"module {path!r}, which keeps its width; {name!r} sizes it "
                                 f"too, so the channels it counts keep their width")


def _own_share(ctx: TraceContext, call: OpCall, canon: Tensor, dim: int, parts: int) -> bool:
    """Whether an equal split's part width is its own width over the number of parts, read
    in the forward (``x.split(x.shape[1] // 2, 1)``, a coupling layer's halves): it then
    shrinks with the parts, as ``chunk(2)``'s does. A width read from another tensor of as
    many channels (ResNeSt's attention split by ``rchannel // self.radix``, ``rchannel``
    read from the features it later multiplies) is judged when the trace ends: unless the
    two carry the same channels by then, the split's channels are kept whole."""
    size = split_arg(call)
    if not isinstance(size, SizeInt) or size._scale != (1, parts):
        return False
    line, _ = channel_line(ctx, size)
    if line is None or line.numel() != canon.shape[dim]:
        return False

    def same() -> bool:
        return torch.equal(ctx.space.find(line), first_line(ctx.space.find(canon), dim))

    def judge() -> None:
        if not same():
            ctx.block(canon, f"{call.display} splits channels into parts of a width read "
                             f"from another tensor's shape, whose channels are not these")

    if not same():
        ctx.at_end.append(judge)
    return True


def _split_attribute(ctx: TraceContext, call: OpCall, width: int) -> tuple[str | None, str]:
    """The int attribute of the running module that holds an equal split's part width
    (``self.split_size``, ``self.n_embd``), or None and why the split keeps its width.

    A fused q/k/v projection split by such a width (``c_attn(x).split(self.n_embd, 2)``)
    stays prunable: the parts shrink alike and the attribute is rewritten. Several
    attributes with that value are resolved by a name with ``split`` in it."""
    if width not in tensors_free((split_arg(call),)):
        return None, f"{call.display} splits a channel dimension at sizes fixed in the code"
    holders = holding(ctx, width)
    if holders and isinstance(split_arg(call), SizeInt) and \
            calling_module(ctx)[1] is ctx.running_module:
        # a width read from a shape (``B, T, C = x.shape; qkv.split(C, 2)``): an attribute
        # holding the same number is a coincidence (a local-attention ``window`` of 32),
        # unless the expression reads it
        holders = [k for k in holders if k in attributes_read(ctx)]
    if len(holders) > 1:
        holders = [k for k in holders if "split" in k.lower()] or holders
    if len(holders) == 1:
        return holders[0], ""
    where = running_module_phrase(ctx)
    if not holders:
        return None, (f"{call.display} splits a channel dimension into parts of {width}, and "
                      f"no int attribute of {where} holds that width (a literal or a width "
                      f"computed in the code cannot be rewritten; store it as an attribute "
                      f"such as self.split_size, or use chunk())")
    return None, (f"{call.display} splits a channel dimension into parts of {width}, which "
                  f"several attributes of {where} hold ({', '.join(holders)}), so prunekit "
                  f"cannot tell which to rewrite; name the one the split reads split_size")


def int_attributes(ctx: TraceContext) -> dict[str, int]:
    """The running module's int attributes (the sizes its forward may read)."""
    return {k: v for k, v in vars(ctx.running_module).items()
            if isinstance(v, int) and not isinstance(v, bool)}


def holding(ctx: TraceContext, size: int) -> list[str]:
    """The running module's int attributes that hold ``size``. Where the running module's
    own code made the call, only those its expression reads
    (:func:`~prunekit.graph.callers.attributes_read`) if any: of ``in_dim`` and ``width``
    both 8, ``x.reshape(-1, self.in_dim, k, k)`` was sized by ``in_dim``; and none where it
    reads none of them but writes ``size`` as a literal (WavLM's ``view(... + (2, 4))`` next
    to ``self.num_heads = 4``), reads it from elsewhere (``view(B, T,
    self.config.num_attention_heads, -1)`` next to an unread ``self.num_heads = 4``: that
    number is then fixed, as a literal is) or computes it from an attribute it reads and a
    literal (``split(self.c // 2, 1)`` next to ``self.c_ = c // 2``)."""
    attrs = int_attributes(ctx)
    holders = [k for k, v in attrs.items() if v == size]
    if holders and calling_module(ctx)[1] is ctx.running_module:
        names = attributes_read(ctx)
        read = [k for k in holders if k in names]
        if read:
            return read
        literals = literals_written(ctx)
        if size in literals or size_read_elsewhere(ctx, size) is not None or \
                scaled_reads(attrs, names, literals, size, divided=True):
            # (computed from an attribute it reads, x.split(self.c // 2, 1), next to a
            # self.c_ = c // 2 it does not: rewriting c_ would leave the split at its size)
            return []
    return holders


def scaled_reads(attrs: dict[str, int], names: Iterable[str], literals: Iterable[int],
                 size: int, *, divided: bool = False) -> list[str]:
    """The int attributes among ``names`` (those a call reads) that times a literal above 1
    of ``literals`` (or, with ``divided``, divided by one) give ``size``: Qwen3.5's
    ``self.head_dim * 2``, CSP's ``self.c // 2``."""
    factors = [n for n in literals if n > 1]
    return [k for k in names if k in attrs and any(
        attrs[k] * n == size or (divided and attrs[k] // n == size) for n in factors)]


def running_module_phrase(ctx: TraceContext) -> str:
    """``module 'a.b'`` for the module running now, ``the model`` for the model's own forward
    (for messages)."""
    return f"module {ctx.path!r}" if ctx.path else "the model"


def _channel_dims(ctx: TraceContext, source: Tensor) -> set[int]:
    """The dims of ``source`` along which its channels vary."""
    vector = ctx.vector_of(source)
    if vector is not None:
        return {vector[0] % source.dim()}
    return varying(ctx.space.find(ctx.labels(source)))


def _carries_channels(ctx: TraceContext, source: Tensor, dim: int) -> bool:
    return dim % source.dim() in _channel_dims(ctx, source)


def _diff(ctx: TraceContext, call: OpCall) -> None:
    """``torch.diff(x, n, dim)``: differences of neighbours along ``dim``, ``n`` shorter.
    Along a dim that carries channels the neighbours would be other channels once some go,
    so those channels are kept whole; elsewhere the channels stay where they are."""
    source = tensors_in(call.args[:1] or (call.kwargs.get("input"),))[0]
    out = tensors_in(call.out)[0]
    dim = call.arg(2, "dim", -1)
    if any(call.kwargs.get(k) is not None for k in ("prepend", "append")) or \
            len(call.args) > 3 or not isinstance(dim, int) or source.dim() == 0:
        raise OpNotMappable("only torch.diff(x, n, dim) without prepend/append is mapped")
    labels = ctx.labels(source)
    if _carries_channels(ctx, source, dim):
        ctx.block(labels, f"{call.display} subtracts neighbours along a dim that carries "
                          f"channels, which removing channels would change")
    ctx.set_labels(out, labels.narrow(dim, 0, out.shape[dim]))


def _running_pick(ctx: TraceContext, call: OpCall) -> None:
    """``cummax``/``cummin``: the running extreme along ``dim`` stays where it is, and the
    indices are positions along ``dim``; along a dim that carries channels those positions
    name channels that pruning would renumber, so the channels are kept whole."""
    source = tensors_in(call.args[:1] or (call.kwargs.get("input"),))[0]
    dim = call.arg(1, "dim")
    if not isinstance(dim, int) or source.dim() == 0:
        raise OpNotMappable(f"dim={dim!r} is not a dim of a tensor with dims")
    labels = ctx.labels(source)
    if _carries_channels(ctx, source, dim):
        ctx.block(labels, f"{call.display} gives positions of channels, which pruning "
                          f"would renumber")
    for out in tensors_in(call.out):
        ctx.set_labels(out, labels)


def _channel_shuffle(ctx: TraceContext, call: OpCall) -> None:
    """``torch.channel_shuffle(x, g)`` (``nn.ChannelShuffle``): channel ``j`` of group ``i``
    moves to ``j·g + i``. Channel ``j`` of every group leaves together, so the group count
    stays valid and the shuffle of the pruned tensor puts the kept channels where the next
    layer expects them."""
    source = tensors_in(call.args[:1] or (call.kwargs.get("input"),))[0]
    out = tensors_in(call.out)[0]
    groups = call.arg(1, "groups")
    if not isinstance(groups, int) or source.dim() < 2 or source.shape[1] % groups:
        raise OpNotMappable(f"groups={groups!r} does not divide the channels of a tensor of "
                            f"shape {tuple(source.shape)}")
    labels = ctx.space.find(ctx.labels(source))
    rep_along(ctx.space, labels.unflatten(1, (groups, -1)), (1,))
    ctx.set_labels(out, torch.channel_shuffle(ctx.space.find(labels), groups))


register_op(("diff",), _diff)
register_op(("cummax", "cummin"), _running_pick)
register_op(("channel_shuffle", "native_channel_shuffle"), _channel_shuffle)
def _broadcast_tensors(ctx: TraceContext, call: OpCall) -> None:
    """``torch.broadcast_tensors(a, b, ...)`` (``torch.distributions`` broadcasts its
    parameters so): each result is its input expanded, labelled as ``expand`` labels it."""
    inputs = tensors_in(call.args)
    outputs = tensors_in(call.out)
    if len(inputs) != len(outputs):
        raise OpNotMappable("expected tensors only")
    for tensor, out in zip(inputs, outputs, strict=True):
        labels = ctx.labels(tensor)
        while labels.dim() < out.dim():
            labels = labels.unsqueeze(0)
        ctx.set_labels(out, labels.expand(out.shape))


register_op(REPLAY, _replay_only)
register_op(("broadcast_tensors",), _broadcast_tensors)
register_op(CHUNKING, chunking)


def _glu(ctx: TraceContext, call: OpCall) -> None:
    """``glu(x, dim) = a · σ(b)`` with ``a, b = x.chunk(2, dim)``: the halves are coupled
    index by index and the result carries a's channels."""
    source = tensors_in(call.args[:1])[0]
    dim = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim", -1)
    vector = ctx.vector_of(source)
    out = tensors_in(call.out)[0]
    if vector is not None and isinstance(dim, int) and out.dim() == source.dim():
        # labels in vector form: the halves along the channel dim are the vector's halves;
        # along another dim they are equal (nothing to join) and the result keeps it
        roots = ctx.space.find(vector[1])
        if dim % source.dim() == vector[0]:
            roots, second = roots.chunk(2)
            ctx.space.union(roots, second)
        ctx.set_vector(out, roots, vector[0])
        return
    labels = ctx.space.find(ctx.labels(source))
    first, second = labels.chunk(2, dim=dim)
    ctx.space.union(first, second)
    ctx.set_labels(tensors_in(call.out)[0], first)


register_op(("glu",), _glu)


def _complex_view(ctx: TraceContext, call: OpCall) -> None:
    """``view_as_complex`` pairs the last dim's two entries into one complex number (rotary
    embeddings written with complex products: Llama 4, DeepSeek-V2): a pair's channels go
    together, and the result has one label per pair. ``view_as_real`` splits each number
    back into the pair, both with its label."""
    source = tensors_in(call.args[:1])[0]
    out = tensors_in(call.out)[0]
    labels = ctx.space.find(ctx.labels(source))
    if call.name == "view_as_complex":
        ctx.set_labels(out, rep_along(ctx.space, labels, (labels.dim() - 1,)).squeeze(-1))
    else:
        ctx.set_labels(out, labels.unsqueeze(-1).expand(*labels.shape, 2))


register_op(("view_as_complex", "view_as_real"), _complex_view)
