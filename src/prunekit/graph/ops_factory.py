"""New tensors made in the forward: ``x.new_zeros(...)`` and friends carry no channels,
except along a dim whose size the call reads from an int attribute.

A value-uniform factory (``zeros``, ``ones``, ``full``, ``empty`` and their ``new_*``
forms) whose call reads the size of a dim from one int attribute of the module whose code
made it (T5's ``torch.zeros((1, self.n_heads, T, K))`` in the layers without a relative
position bias) gives that dim fresh labels, and binds the attribute to them. Where the
tensor meets channels along that dim (the attention scores' heads), the two join, and
surgery rewrites the attribute with the channels kept: the pruned model makes the tensor at
the pruned size. That is exact, since every index holds the same value. Random factories
(``rand``, ``randn``: factorised NoisyNet noise, ``torch.randn(self.in_features)``) are
treated alike: every index draws from the same distribution, so the pruned model draws the
kept channels' noise as the unpruned one does (as ``randn(x.shape[-1])``, sized by a shape
read, already shrinks). A factory whose values depend on the index (``arange``) is left
without channels, and where it meets channels along a dim it spans, they are kept whole
(:data:`prunekit.graph.ops_pointwise.FIXED_OPERAND`). Where the labels meet no channels,
they form units without parameters, which nothing prunes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from prunekit.graph.callers import (
    arguments_written,
    attributes_read,
    calling_module,
    user_line,
)
from prunekit.graph.labels import NEUTRAL, varies
from prunekit.graph.ops import OpCall, register_op, tensors_in
from prunekit.graph.sizes import SizeInt, channel_line, note_values, written_shape

if TYPE_CHECKING:
    from prunekit.graph.trace import TraceContext

__all__ = ["UNIFORM", "attribute_sized", "expanded_by_attribute"]

NEW = ("new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "new_empty_strided")
UNIFORM = frozenset(("zeros", "ones", "empty", "full", "new_zeros", "new_ones", "new_empty",
                     "new_full", "rand", "randn"))
# attributes that count the layers or directions of a stack (``num_layers``, ``n_layers``,
# ``num_directions``): the leading dim of an RNN's state, not its channels
_LAYER_COUNT = re.compile(r"layer|direction", re.IGNORECASE)
# one value everywhere: an initial state (``h = x.new_zeros(B, self.hidden)``)
CONSTANT = UNIFORM - {"rand", "randn"}


def attribute_sized(ctx: TraceContext, call: OpCall) -> None:
    """Label the dim of a value-uniform factory's result that the call sizes from one int
    attribute (the module docstring); nothing where no dim is, or where the size written
    for it is written for another dim too (which one the attribute sizes is unknown)."""
    out = call.out
    if call.name not in UNIFORM or not isinstance(out, Tensor) or out.dim() == 0:
        return
    shape = written_shape(call)
    if len(shape) == out.dim() and not _reads_channels(ctx, shape):
        bound = _bind_uniform_dim(ctx, out, shape, lambda dim: True)
        if bound is not None and call.name in CONSTANT:
            ctx.states.append((*bound, user_line() or "the model's code"))


def expanded_by_attribute(ctx: TraceContext, call: OpCall) -> None:
    """``mask.unsqueeze(-1).expand(-1, -1, self.d)`` (or ``.repeat(1, 1, self.d)``): a
    tensor without channels repeated along a dim of size 1 to a size the call reads from
    one int attribute holds the same value at every index of that dim, as a uniform
    factory does: that dim gets fresh labels and the attribute is bound to them."""
    source, out = call.args[0] if call.args else None, call.out
    if not isinstance(source, Tensor) or not isinstance(out, Tensor) or \
            source.dim() != out.dim():
        return
    canon = ctx.space.find(ctx.labels(source))
    if any(varies(canon, d) for d in range(canon.dim())):
        return  # (a tensor with channels keeps them; sizes.py judges the rest)
    if call.name == "repeat":  # counts: of a dim of size 1, the size it is repeated to
        counts = call.args[1:]
        shape = tuple(counts[0]) if len(counts) == 1 and isinstance(counts[0], (tuple, list)) \
            else tuple(counts)
    else:
        shape = written_shape(call)
    if len(shape) == out.dim():
        _bind_uniform_dim(ctx, out, shape, lambda dim: source.shape[dim] == 1)


def _bind_uniform_dim(ctx: TraceContext, out: Tensor, shape: tuple[object, ...],
                      uniform: Callable[[int], bool]) -> tuple[Tensor, str, str] | None:
    """Give fresh labels to the first dim of ``out`` (one along which its values are
    ``uniform``) whose written size one int attribute the call reads holds, and bind that
    attribute to them; nothing where the size is written as an int for another dim too,
    unless the call names the attribute at that dim (``x.new_zeros(b, self.num_feat, h, w)``
    with ``h == w == num_feat``). A dim sized by a count of layers or directions is taken
    only where no other dim is. Returns (the labels it gave, the attribute's module path,
    its name), or None."""
    read = attributes_read(ctx)
    if not read:
        return None
    path, module = calling_module(ctx)
    # (owner path, attribute, value): the module's own, and those of a child the expression
    # names (``x.new_zeros(B, self.cell.hidden_size)``)
    held = [(path, k, v) for k, v in vars(module).items() if k in read and type(v) is int]
    for name, child in module._modules.items():
        if name in read and child is not None:
            where = f"{path}.{name}" if path else name
            held += [(where, k, v) for k, v in vars(child).items()
                     if k in read and type(v) is int]
    plain = [size for size in shape if type(size) is int]  # (not sizes read from a shape)
    names = arguments_written(ctx)
    if names is not None and len(names) != len(shape):
        names = None
    found: list[tuple[int, list[tuple[str, str]]]] = []  # (dim, its attributes)
    for dim, size in enumerate(shape):
        if type(size) is not int or size < 2 or not uniform(dim):
            continue
        named = names[dim] if names is not None else None
        if not isinstance(named, str) and plain.count(size) > 1:
            continue
        holders = [(owner, k) for owner, k, v in held
                   if v == size and (not isinstance(named, str) or k == named)]
        # one attribute; or one name held by the module and a child it names, equal
        # (``self.hidden_size = 32`` beside ``self.cell.hidden_size``): both follow
        if holders and len({k for _, k in holders}) == 1 and \
                not varies(ctx.space.find(ctx.labels(out)), dim):
            found.append((dim, holders))
    if not found:
        return None
    # labels in vector form vary along one dim: a stack's depth is no channel axis
    # (``torch.zeros(self.num_layers, B, self.hidden_size)``: the hidden units)
    dim, holders = next((f for f in found if not _LAYER_COUNT.search(f[1][0][1])), found[0])
    ids = ctx.space.new_ids(int(out.shape[dim]))
    ctx.set_vector(out, ids, dim)
    for holder in holders:
        ctx.bind_attribute(*holder, ids)
    return (ids, *holders[0])


def _reads_channels(ctx: TraceContext, shape: tuple[object, ...]) -> bool:
    """Whether another dim is sized by a channel width read from a shape (``h.new_zeros(B,
    h.shape[1], self.max_len)``, a padded or cached copy of ``h``): that dim follows the
    channels (:mod:`prunekit.graph.sizes`), and labels vary along one dim only, so the
    attribute (a length) is left alone."""
    return any(isinstance(size, SizeInt) and channel_line(ctx, size)[1] for size in shape)


def _new(ctx: TraceContext, call: OpCall) -> None:
    """``x.new_zeros(...)`` and friends, and ``torch.zeros(...)`` and friends with a tensor
    among their arguments (a size computed as a 0-dim tensor: FastSpeech's length regulator,
    ``torch.zeros((B, durations.sum(1).max(), C))``; without one, the trace's factory path
    labels them), make a new tensor: it carries no channels (but see
    :func:`attribute_sized`); the size tensor couples nothing."""
    note_values(call)
    for out in tensors_in(call.out):
        ctx.set_labels(out, torch.full(tuple(out.shape), NEUTRAL, dtype=torch.long))
    attribute_sized(ctx, call)


register_op(NEW, _new)
register_op(("zeros", "ones", "empty", "full", "rand", "randn"), _new)
