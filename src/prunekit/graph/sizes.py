"""Ints read from a traced tensor's shape, and the channel dims they size.

``B, N, C = x.shape`` gives plain ints, so a ``reshape(B, C, -1)`` of another tensor does
not tell the trace that its dim 1 must keep ``x``'s width. While the trace runs, a shape
read (``t.shape``, ``t.size()``, ``t.size(d)``, ``t.numel()``: the product of every dim) of
a tracked tensor returns :class:`SizeInt` values instead: ints that remember the label
tensor of ``t`` and the dims they count. Arithmetic keeps that provenance: a product of
dims of one read is *exact* (it still counts the channels of those dims, ``H * D`` of a
head split), anything else (``C // self.num_heads``, ``C * 2``, ``N - 1``) is *derived*
and only remembers its sources.

Where such an int sizes a dim of a reshape / view / expand / factory result, or a part of a
split into listed sizes (:data:`SIZED`),
with "carries channels" read from the label classes at that point (a dim along which they
do not vary keeps its size: batch, tokens, spatial, channels kept whole, the per-head dim
of heads that go whole):

* an int whose source dims carry no channels sizing a dim that carries none, or any int
  derived from such dims (``B * self.num_heads``): nothing happens, as before;
* an exact int whose source dims carry no channels (a blocked residual's ``C``) sizing a
  dim that carries channels keeps those channels whole (they must keep that width);
* an int that counts channels sizing a dim that carries channels: the two must shrink
  alike. Where the dim holds the same classes in proportion already (a reshape back to the
  width read; ``c // groups`` of a channel shuffle's own width) nothing is needed; an exact
  int is otherwise joined with the dim index by index (PVT-v2's ``sr(x).reshape(B, C, -1)``
  makes the ``sr`` conv's output follow the residual width ``C``);
* an exact int that counts channels sizing a dim of a new tensor (``x.new_zeros(B, C)``,
  an expand or ``repeat_interleave`` of a size-1 dim of a tensor whose channels, if any,
  are all kept whole: Mamba2's B and C repeated to ``output_size=num_heads`` heads) gives
  that dim the source's labels; an expand that repeats a dim of size 1 follows any width;
* anything else (``C // self.num_heads`` of the residual sizing a per-head dim that does
  not shrink, a channel width written for a fixed dim) could go stale, so the channels
  involved are kept whole, with the reason. A factor that is an int attribute the reshape
  handler rewrites (``c // self.head_dim``) was judged there and is left to it.

Where the model's code finds an exact int that counts channels equal to a plain int with
``==`` or ``!=`` (PVT's ``if num_channels != self.num_channels: raise`` in a later stage),
the comparison must hold after pruning: if it reads exactly one int attribute of the module
whose code it is holding that value, the attribute is bound to the channels and rewritten
with those kept; else (a literal, an int from elsewhere, several attributes holding it) the
channels are kept whole, with the reason. Comparisons made by torch's or prunekit's code,
dict lookups, ``in`` and sorting judge nothing; nor do ``<`` and friends (a bound such as
``C <= self.max_dim`` is no width to rewrite, and widths only shrink) or ``==`` of two
different values (it changes only if the pruned width lands on that value).

The ints behave exactly like ints for user code (hash, comparison results, ``range``,
f-strings, ``torch.Size``); pickling or copying one gives a plain int. When the trace ends, its
sources are dropped (a leftover int holds no label tensor) and int attributes of the
model's modules set from them during the trace are turned back into plain ints.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prunekit.graph.callers import user_line
from prunekit.graph.labels import NEUTRAL, varies, varying
from prunekit.graph.ops import OpCall, OpHandler, tensors_in

if TYPE_CHECKING:
    from prunekit.graph.trace import TraceContext

__all__ = ["SIZED", "SizeInt", "SizeTracker", "channel_line", "check_sizes", "note_number",
           "split_arg", "split_sizes", "with_sizes", "without_channels", "written_shape"]

# ops whose int arguments give the result's shape, and where the sizes start
_TENSOR_FIRST = ("view", "reshape", "expand", "broadcast_to", "new_zeros", "new_ones",
                 "new_empty", "new_full")
_FACTORIES = ("zeros", "ones", "empty", "full", "rand", "randn")
_SPLITS = ("split", "split_with_sizes")  # into parts of the sizes listed
SIZED = frozenset((*_TENSOR_FIRST, *_FACTORIES, *_SPLITS, "arange", "unflatten",
                   "repeat_interleave", "repeat"))
_FILLS = ("full", "new_full")  # a fill value follows the size


class Source:
    """The labels of a tensor at the time code read its shape (None once the trace ended),
    and the tracker that read it."""

    __slots__ = ("labels", "tracker")

    def __init__(self, labels: Tensor, tracker: SizeTracker) -> None:
        self.labels: Tensor | None = labels
        self.tracker = tracker


Part = tuple[Source, tuple[int, ...]]


class SizeInt(int):
    """An int read from a traced tensor's shape: ``_parts`` are the (source, dims) it came
    from; ``_scale`` is ``(num, den)`` if it is ``num / den`` times the product of exactly
    those dims of one source (``(1, 1)``: *exact*), None if derived otherwise."""

    _parts: tuple[Part, ...]
    _scale: tuple[int, int] | None

    __hash__ = int.__hash__  # (defining __eq__ would otherwise remove it)

    def __eq__(self, other: object) -> bool:
        return _noted(self, other, _INT_EQ(self, other), True)

    def __ne__(self, other: object) -> bool:
        return _noted(self, other, _INT_NE(self, other), False)

    @property
    def _exact(self) -> bool:
        return self._scale == (1, 1)

    @property
    def _divisor(self) -> int | None:
        """``k`` if this is the width read divided by ``k`` (``C // self.num_heads``; 1:
        exact), else None."""
        return self._scale[1] if self._scale is not None and self._scale[0] == 1 else None

    def __reduce__(self) -> tuple[type, tuple[int]]:  # pickle, copy, deepcopy: a plain int
        return int, (int(self),)

    def __mul__(self, other: Any) -> Any:
        return _combine(self, other, int.__mul__(self, other), "*")

    def __rmul__(self, other: Any) -> Any:
        return _combine(self, other, int.__rmul__(self, other), "*")

    def __add__(self, other: Any) -> Any:
        return _combine(self, other, int.__add__(self, other))

    def __radd__(self, other: Any) -> Any:
        return _combine(self, other, int.__radd__(self, other))

    def __sub__(self, other: Any) -> Any:
        return _combine(self, other, int.__sub__(self, other))

    def __rsub__(self, other: Any) -> Any:
        return _combine(self, other, int.__rsub__(self, other))

    def __floordiv__(self, other: Any) -> Any:
        return _combine(self, other, int.__floordiv__(self, other), "//")

    def __rfloordiv__(self, other: Any) -> Any:
        return _combine(self, other, int.__rfloordiv__(self, other))

    def __mod__(self, other: Any) -> Any:
        return _combine(self, other, int.__mod__(self, other))

    def __pow__(self, other: Any, mod: Any = None) -> Any:
        return _combine(self, other, int.__pow__(self, other, mod))

    # a number computed from a width (1 / math.sqrt(head_dim), C ** -0.5): noted, since it
    # changes when the channels counted go (see SizeTracker.numbers)
    def __truediv__(self, other: Any) -> Any:
        return _combine(self, other, int.__truediv__(self, other))

    def __rtruediv__(self, other: Any) -> Any:
        return _combine(self, other, int.__rtruediv__(self, other))

    def __float__(self) -> float:
        note_number(self)
        return int.__float__(self)


_EXACT = (1, 1)
_INT_EQ, _INT_NE = int.__eq__, int.__ne__


def _noted(size: SizeInt, other: object, result: Any, equal: bool) -> Any:
    """``result`` of ``size == other`` (``equal``) or ``size != other``. Where it says the two
    are equal, ``other`` is a plain int and ``size`` exact, the trace that read ``size``
    judges the comparison, made by the caller of ``__eq__`` / ``__ne__``."""
    if result is equal and type(other) is int and size._scale == _EXACT:
        source = size._parts[0][0]
        judge = source.tracker.compared if source.labels is not None else None
        if judge is not None:
            judge(size, sys._getframe(2))
    return result


def _make(value: int, parts: tuple[Part, ...], scale: tuple[int, int] | None) -> SizeInt:
    out = SizeInt(value)
    out._parts, out._scale = parts, scale
    return out


def _combine(a: SizeInt, b: Any, value: Any, op: str = "") -> Any:
    """The result of ``a op b`` (or ``b op a``): a SizeInt when it is an int, else ``value``
    unchanged. Its scale is kept for a product of two exact ints over disjoint dims of one
    read, and for ``a * k`` and ``a // k`` (``k`` a plain positive int dividing ``a``)."""
    if type(value) is not int:  # NotImplemented, a float: not a size
        if type(value) is float or type(b) is float:  # (C ** -0.5: int.__pow__ declines,
            note_number(a)  # and float.__rpow__ computes it, unseen)
        return value
    scale = a._scale
    if isinstance(b, SizeInt):
        (source, dims), (other, more) = a._parts[0], b._parts[0]
        if op == "*" and a._exact and b._exact and source is other and not set(dims) & set(
                more):
            return _make(value, ((source, tuple(sorted(dims + more))),), (1, 1))
        return _make(value, a._parts + tuple(p for p in b._parts if p not in a._parts), None)
    if scale is None or type(b) is not int or b <= 0:
        return _make(value, a._parts, None)
    if op == "*":
        return _make(value, a._parts, _reduced(scale[0] * b, scale[1]))
    if op == "//" and int(a) % b == 0:
        return _make(value, a._parts, _reduced(scale[0], scale[1] * b))
    return _make(value, a._parts, None)


def note_number(size: SizeInt) -> None:
    """Note ``size`` used as a number (in float arithmetic, or as a tensor op's scalar
    operand: ``z / z.shape[-1]``) by the code of the frame that called, for
    :meth:`SizeTracker.numbers`."""
    for source, _ in size._parts:
        if source.labels is not None:
            source.tracker.used_as_number.append((size, user_line() or ""))
            return


_VALUE_ARGS = {"tensor": (0, "data"), "as_tensor": (0, "data"), "scalar_tensor": (0, "s"),
               "full": (1, "fill_value"), "new_tensor": (1, "data"), "new_full": (2, "fill_value")}


def note_values(call: OpCall) -> None:
    """A width put in a tensor as its value (RAFT's ``torch.sqrt(torch.tensor(dim).float())``,
    ``torch.full((), dim)``) is a number from then on: the arithmetic on that tensor is out
    of the SizeInt's sight, so it is noted here (:func:`note_number`)."""
    where = _VALUE_ARGS.get(call.name)
    if where is None:
        return
    value = call.args[where[0]] if len(call.args) > where[0] else call.kwargs.get(where[1])
    for item in value if isinstance(value, (list, tuple)) else (value,):
        if type(item) is SizeInt:
            note_number(item)


def _reduced(num: int, den: int) -> tuple[int, int]:
    g = math.gcd(num, den)
    return num // g, den // g


class SizeTracker:
    """Hands out SizeInts for the shape reads of one trace, and drops their sources after."""

    def __init__(self) -> None:
        self._sources: list[Source] = []
        # (op, module path, result labels, dim, size) of sizes not followed when written
        self.pending: list[tuple[str, str, Tensor, int, SizeInt]] = []
        # judges a size found equal to a plain int by the code of a frame (size_read sets it;
        # the verdicts wait in TraceContext.at_end for the trace's end)
        self.compared: Callable[[SizeInt, FrameType], None] | None = None
        # (size, "file:line") of sizes the code used as numbers
        self.used_as_number: list[tuple[SizeInt, str]] = []

    def numbers(self, ctx: TraceContext) -> list[tuple[str, Tensor]]:
        """(where, labels) of the widths the code computed a number from (an attention
        scale ``1 / math.sqrt(ch)`` with ``ch`` read from a shape), one per place: the
        labels of the channels each counts. Called when the forward has ended."""
        found: dict[str, Tensor] = {}
        for size, where in self.used_as_number:
            for source, dims in size._parts:
                if source.labels is None or where in found:
                    continue
                canon = ctx.space.find(source.labels)
                lines = [_first_line(canon, d) for d in dims if varies(canon, d)]
                if lines:
                    found[where] = torch.cat(lines)
        self.used_as_number.clear()
        return list(found.items())

    def settle(self, ctx: TraceContext) -> None:
        """After the forward: judge again each size not followed when it was written; the
        channels of those that still cannot follow are kept whole."""
        for display, path, labels, dim, size in self.pending:
            if not _judge(ctx, "", labels, dim, size, None):
                _, sources = channel_line(ctx, size)
                canon = ctx.space.find(labels)
                _keep_whole(ctx, display, path, dim, size, [canon, *sources],
                            fixed=not sources)
        self.pending.clear()

    @property
    def live(self) -> bool:
        """Whether any shape was read so far (else no argument can hold a SizeInt)."""
        return bool(self._sources)

    def read(self, labels: Tensor, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
             out: Any) -> Any:
        """``out`` of a shape read of a tensor labelled ``labels``, as SizeInts."""
        source = Source(labels, self)
        self._sources.append(source)
        if type(out) is int and func is torch.Tensor.numel:  # every dim
            return _make(out, ((source, tuple(range(labels.dim()))),), (1, 1)) \
                if labels.dim() else out
        if type(out) is int:  # t.size(d)
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if not isinstance(dim, int) or labels.dim() == 0:
                return out
            return _make(out, ((source, (dim % labels.dim(),)),), (1, 1))
        return torch.Size([_make(v, ((source, (d,)),), (1, 1)) for d, v in enumerate(out)])

    def close(self, modules: Iterable[nn.Module]) -> None:
        """End of the trace: drop every source, and turn SizeInts the model's modules
        stored as attributes (``self.feat_size = (H, W)``) back into plain ints."""
        self.compared = None
        for source in self._sources:
            source.labels = None
        if not self._sources:
            return
        self._sources.clear()
        self.pending.clear()
        for module in modules:
            for key, value in list(vars(module).items()):
                plain = _plain(value)
                if plain is not value:
                    setattr(module, key, plain)


def _plain(value: Any) -> Any:
    """``value`` with SizeInts (also inside a tuple, list or Size) made plain ints."""
    if isinstance(value, SizeInt):
        return int(value)
    if type(value) in (tuple, list, torch.Size) and any(isinstance(v, SizeInt) for v in value):
        return type(value)(int(v) if isinstance(v, SizeInt) else v for v in value)
    return value


def with_sizes(name: str, handler: OpHandler | None) -> OpHandler | None:
    """``handler`` followed by :func:`check_sizes` for the ops in :data:`SIZED`."""
    if handler is None or name not in SIZED:
        return handler

    def sized(ctx: TraceContext, call: OpCall) -> None:
        handler(ctx, call)
        if ctx.sizes.live:
            check_sizes(ctx, call)

    return sized


def _sized_args(call: OpCall, out: Tensor) -> list[tuple[int, SizeInt]]:
    """(result dim, SizeInt written for it) for every SizeInt among the call's sizes."""
    name, args, kwargs = call.name, call.args, call.kwargs
    if name == "arange":
        ends = [a for a in args if not isinstance(a, (torch.dtype, Tensor))]
        if len(ends) == 1 or (len(ends) == 2 and ends[0] == 0):
            end = ends[-1]
            return [(0, end)] if isinstance(end, SizeInt) and out.dim() == 1 else []
        return []
    if name == "repeat_interleave":
        return _repeated_dim(call, out)
    if name == "repeat":  # a dim of size 1 (or a new one) repeated n times has size n:
        # PyG's to_dense_batch repeats a 0-d fill value to [n, *x.shape[1:]]
        source = args[0] if args else kwargs.get("input")
        counts = tuple(args[1:])
        if len(counts) == 1 and isinstance(counts[0], (tuple, list)):
            counts = tuple(counts[0])
        if not isinstance(source, Tensor) or len(counts) != out.dim():
            return []
        new = out.dim() - source.dim()
        return [(d, s) for d, s in enumerate(counts) if isinstance(s, SizeInt)
                and (d < new or source.shape[d - new] == 1)]
    if name == "unflatten":
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        sizes = args[2] if len(args) > 2 else kwargs.get("sizes")
        if not isinstance(dim, int) or not isinstance(sizes, (tuple, list)):
            return []
        first = dim % max(out.dim() - len(sizes) + 1, 1)
        return [(first + i, s) for i, s in enumerate(sizes) if isinstance(s, SizeInt)]
    rest = written_shape(call)
    if len(rest) != out.dim():
        return []
    return [(d, s) for d, s in enumerate(rest) if isinstance(s, SizeInt)]


def _repeated_dim(call: OpCall, out: Tensor) -> list[tuple[int, SizeInt]]:
    """(dim, size) for ``x.repeat_interleave(n, dim, output_size=m)`` that repeats a dim of
    size 1 by a SizeInt (the result's size there: ``m``, else ``n``); none otherwise.
    Mamba2's SSD repeats its one group of B and C to ``num_heads = x.shape[2]`` heads."""
    args, kwargs = call.args, call.kwargs
    source = args[0] if args else kwargs.get("input")
    repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
    dim = args[2] if len(args) > 2 else kwargs.get("dim")
    size = kwargs.get("output_size", args[3] if len(args) > 3 else None)
    if not isinstance(source, Tensor) or type(dim) is not int or out.dim() != source.dim():
        return []
    dim %= out.dim()
    if source.shape[dim] != 1:
        return []
    size = size if isinstance(size, SizeInt) else repeats
    return [(dim, size)] if isinstance(size, SizeInt) and size == out.shape[dim] else []


def written_shape(call: OpCall) -> tuple[Any, ...]:
    """The sizes a reshape, expand or factory call writes for its result, one per dim
    (``-1`` left as written); empty where it writes none."""
    name, args, kwargs = call.name, call.args, call.kwargs
    rest = args[1:] if name in _TENSOR_FIRST else args
    if name in _FILLS:
        rest = rest[:1]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = tuple(rest[0])
    if not rest:
        found = kwargs.get("size", kwargs.get("shape"))
        rest = tuple(found) if isinstance(found, (tuple, list)) else ()
    return tuple(rest)


def check_sizes(ctx: TraceContext, call: OpCall) -> None:
    """Apply the rules of the module docstring to the SizeInts that size ``call``'s result.

    Whether a dim carries channels is read from the labels' classes: a dim along which they
    do not vary keeps its size (batch, tokens, spatial, channels kept whole, the per-head
    dim of heads that go whole). Joins and new labels are made now; a size that cannot be
    followed yet is judged again when the trace ends (:meth:`SizeTracker.settle`), since
    later ops may join its classes (SplitAttn's ``x * attn.reshape(B, r, RC // r, 1, 1)``)."""
    out = call.out
    note_values(call)
    if call.name in _SPLITS:
        _check_split(ctx, call)
        return
    if call.name not in SIZED or not isinstance(out, Tensor):
        return
    sized = _sized_args(call, out)
    if not sized:
        return
    labels = ctx.labels(out)
    broadcast = call.name in ("expand", "broadcast_to", "repeat_interleave", "repeat")
    for dim, size in sized:
        if broadcast and _broadcast_dim(call, out, dim):
            # a dim repeated to the width read follows it at run time; a new tensor's
            # (an expand of one without channels that may shrink) takes its labels
            line, _ = channel_line(ctx, size)
            if line is not None and size._exact and without_channels(ctx, labels):
                ctx.set_vector(out, line, dim)
                labels = ctx.labels(out)
            continue
        if not _judge(ctx, call.name, labels, dim, size, out) and not (
                size._scale is not None and not size._exact and _rewritten_factor(ctx, size)):
            ctx.sizes.pending.append((call.display, ctx.path, labels, dim, size))
        labels = ctx.labels(out)


def split_arg(call: OpCall) -> Any:
    """What a ``split``/``split_with_sizes`` call is passed as its sizes: one part width or
    a list of them."""
    return call.args[1] if len(call.args) > 1 else next(
        (call.kwargs[k] for k in ("split_size_or_sections", "split_size", "split_sizes")
         if k in call.kwargs), None)


def split_sizes(call: OpCall) -> list[Any] | None:
    """The list of part sizes a ``split``/``split_with_sizes`` call writes (None for one
    size for every part)."""
    sizes = split_arg(call)
    return list(sizes) if isinstance(sizes, (tuple, list)) else None


def _check_split(ctx: TraceContext, call: OpCall) -> None:
    """A split into parts listed by size, some of them ints read from a shape (FocalNet's
    ``split((C, C, self.focal_level + 1), 1)`` of a projection, ``C`` the width of the
    block's input): each such part must keep that width, judged as a reshape's dim is (an
    exact width read elsewhere joins the part index by index, so both shrink alike)."""
    sizes = split_sizes(call)
    source = call.args[0] if call.args else call.kwargs.get("input")
    pieces = tensors_in(call.out)
    if sizes is None or not isinstance(source, Tensor) or len(sizes) != len(pieces):
        return
    dim = call.arg(2, "dim", 0)
    if not isinstance(dim, int) or source.dim() == 0:
        return
    dim %= source.dim()
    for piece, size in zip(pieces, sizes, strict=True):
        if isinstance(size, SizeInt):
            labels = ctx.labels(piece)
            if not _judge(ctx, call.name, labels, dim, size, None):
                ctx.sizes.pending.append((call.display, ctx.path, labels, dim, size))


def _judge(ctx: TraceContext, name: str, labels: Tensor, dim: int, size: SizeInt,
           out: Tensor | None) -> bool:
    """True if dim ``dim`` of a result labelled ``labels`` follows ``size`` (joining or
    labelling what it needs: ``out`` is the result, None once the trace has ended)."""
    canon = ctx.space.find(labels)
    vary = varying(canon)
    line, sources = channel_line(ctx, size)
    if not sources:  # a width no pruning changes: fine unless written for channels, as
        # it is or shared out (C // self.num_heads of a residual kept whole)
        return dim not in vary or size._divisor is None
    if dim in vary:
        return line is not None and vary == {dim} and _follows(ctx, line, size, canon, dim)
    if out is not None and line is not None and size._exact and _neutral(canon) and \
            name not in ("reshape", "view", "arange"):  # (arange's values are positions)
        ctx.set_vector(out, line, dim)  # a new tensor: it takes C's labels
        return True
    return False


def _follows(ctx: TraceContext, line: Tensor, size: SizeInt, canon: Tensor, dim: int) -> bool:
    """Make dim ``dim`` of the result (labels ``canon``, varying along it alone) follow
    ``size``, which counts the channels in ``line`` times ``num / den``. It does if every
    class occurs ``num / den`` times as often along the dim as in ``line`` (cutting any
    classes keeps the ratio: ``C // groups`` of a channel shuffle's own width, a reshape
    back to the width read); else an exact size joins the two index by index (cutting a
    class then removes as many indices from each). False if it cannot follow."""
    target = _first_line(canon, dim)
    num, den = size._scale or (0, 0)
    classes, counts = torch.unique(ctx.space.find(line), return_counts=True)
    here, times = torch.unique(target, return_counts=True)
    if torch.equal(classes, here) and torch.equal(counts * num, times * den):
        return True  # the same channels already (a reshape of the tensor read)
    if num == 1 and den > 1 and line.numel() == den * target.numel():
        # C // heads sizing a per-head dim: position j of each of the ``den`` blocks of the
        # line joins position j of the dim, so a cut takes ``den`` times as many from C
        ctx.space.union(line.reshape(den, -1), target.reshape(1, -1).expand(den, -1))
        return True
    if not size._exact or line.numel() != target.numel():
        return False
    ctx.space.union(line, target)
    return True


def _rewritten_factor(ctx: TraceContext, size: SizeInt) -> bool:
    """Whether the factor of a scaled size (``c // self.head_dim``) is an int attribute of
    the running module that surgery rewrites (bound by the reshape handler, which already
    judged the split): the ratio then changes on purpose, as before this module."""
    num, den = size._scale or (1, 1)
    factors = {num, den} - {1}
    bound = {attr for path, attr in ctx.bindings if path == ctx.path}
    attrs = vars(ctx.running_module)
    return any(attrs.get(k) in factors for k in bound)


def channel_line(ctx: TraceContext, size: SizeInt) -> tuple[Tensor | None, list[Tensor]]:
    """The labels of the sources of ``size`` whose classes vary along the dims it was read
    from (none: a width no pruning changes), and, for a size that is a multiple of such
    dims of one source along which alone that source varies, the line of classes along
    them (index ``i`` of the dims read, flattened, at index 0 of the others)."""
    sources: list[Tensor] = []
    line: Tensor | None = None
    for source, dims in size._parts:
        if source.labels is None:  # the trace that read it has ended
            continue
        canon = ctx.space.find(source.labels)
        vary = varying(canon)
        if not vary & set(dims):
            continue
        sources.append(canon)
        if size._scale is not None and vary <= set(dims):
            index = tuple(slice(None) if d in dims else 0 for d in range(canon.dim()))
            line = canon[index].reshape(-1)
    return line, sources


def _first_line(labels: Tensor, dim: int) -> Tensor:
    return labels.movedim(dim, -1).reshape(-1, labels.shape[dim])[0]


def without_channels(ctx: TraceContext, labels: Tensor) -> bool:
    """Whether ``labels`` hold no channels a cut could split: all NEUTRAL, or one class
    (kept whole, as Mamba2's B and C, whose width its code fixes; or a single unit, as the
    one output of ``nn.Linear(d, 1)`` scoring each token). Repeated along a dim to a
    width, such a tensor is a broadcast: it takes that width's channels."""
    return _neutral(labels) or ctx.space.roots(labels).numel() == 1


def _neutral(labels: Tensor) -> bool:
    return labels.numel() == 0 or bool((labels == NEUTRAL).all())


def _broadcast_dim(call: OpCall, out: Tensor, dim: int) -> bool:
    """Whether ``dim`` of an expand's result repeats a dim of size 1 (or a new one)."""
    source = call.args[0] if call.args else call.kwargs.get("input")
    if not isinstance(source, Tensor):
        return False
    at = dim - (out.dim() - source.dim())
    return at < 0 or source.shape[at] == 1


def _keep_whole(ctx: TraceContext, display: str, path: str, dim: int, size: SizeInt,
                labels: list[Tensor], *, fixed: bool = False) -> None:
    where = f"module {path!r}" if path else "the model"
    if fixed:
        reason = (f"{display} in {where} sizes channels (dim {dim}) by {int(size)}, read "
                  f"from a tensor's shape that no pruning changes, so they are kept whole; "
                  f"write -1 for it to prune them")
    else:
        how = "read from a tensor's shape" if size._exact else \
            "computed from a width read from a tensor's shape"
        reason = (f"{display} in {where} sizes dim {dim} by {int(size)}, {how}, in a "
                  f"way the channels there cannot follow, so the channels involved are kept "
                  f"whole; write -1 or an int attribute for it to prune them")
    for lab in labels:
        ctx.block(lab, reason)
