"""Channel labels: one integer id per channel, and a vectorised union-find that couples them.

The tracer shadows every activation with an int64 *label tensor* of the same shape. An
element's label names the channel it belongs to; two labels that must be removed together
(a conv's output channel and the next conv's input channel, two residual partners, ...)
are joined in the union-find. After tracing, each equivalence class is one prunable *unit*.

Label 0 (``NEUTRAL``) marks elements that belong to no channel (constants, tensors created
inside ``forward``); it is never joined. A *block* id is a fresh label carrying a reason;
every unit that contains one keeps its shape (model inputs/outputs, unsupported ops, ...).
A tensor that carries no channels but whose shape no pruning changes (a sum over all its
channels) gets a block id rather than NEUTRAL (:func:`fixed_shape`), so that a channel
dimension lined up with one of its dims position by position keeps its width too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

NEUTRAL = 0
_BIG = 4096  # above this many elements, union first drops dims along which nothing varies
_DEDUP = 256  # above this many pairs, union drops repeated pairs before joining


class LabelSpace:
    """Allocates channel ids and joins them; all operations work on whole tensors of ids.

    The union-find parent array is a NumPy array: label tensors are small once their
    broadcast dims are cut (:func:`cut_broadcast`), and on small arrays a NumPy op costs a
    fraction of a torch op's dispatch. Label tensors go in and out as CPU int64 tensors
    (``Tensor.numpy()`` / ``torch.from_numpy`` share memory, nothing is copied twice).
    """

    def __init__(self) -> None:
        self._parent = np.arange(1024, dtype=np.int64)
        self._size = 1  # id 0 is NEUTRAL
        self.block_reasons: dict[int, str] = {}
        # 1-D tensors that :meth:`find` (or :meth:`new_ids`) returned since the last union
        # linked two roots: their ids are roots still, so finding them again is the identity
        # (a layer's input vector is mostly the previous layer's roots). Any link clears it.
        self._roots: dict[int, Tensor] = {}

    @property
    def size(self) -> int:
        """Number of ids allocated so far (including NEUTRAL)."""
        return self._size

    def new_ids(self, count: int) -> Tensor:
        """``count`` fresh ids, each its own class (not to be written to: :meth:`find` may
        answer them with themselves)."""
        start, stop = self._size, self._size + count
        if stop > self._parent.size:
            grown = np.arange(max(stop, 2 * self._parent.size), dtype=np.int64)
            grown[: self._size] = self._parent[: self._size]
            self._parent = grown
        self._size = stop
        ids = torch.from_numpy(np.arange(start, stop, dtype=np.int64))  # cheaper than torch's
        self._roots[id(ids)] = ids
        return ids

    def block_id(self, reason: str) -> int:
        """A fresh id that marks whatever joins it as unprunable, for ``reason``."""
        bid = self._size
        self.new_ids(1)
        self.block_reasons[bid] = reason
        return bid

    def block(self, labels: Tensor, reason: str) -> None:
        """Make every channel in ``labels`` unprunable, remembering ``reason``."""
        flat = _np_compact(labels).reshape(-1)
        real = sorted_unique(flat[flat != NEUTRAL])
        if real.size == 0:
            return
        bid = self.block_id(reason)
        self._union_np(real, np.full(real.shape, bid, dtype=np.int64))

    def find(self, labels: Tensor) -> Tensor:
        """The class representative of every id in ``labels`` (same shape). A vector result
        may be ``labels`` itself or one returned before (see ``_roots``): never write to it."""
        if labels.dim() == 1:  # a vector (the common case): nothing to compact
            if self._roots.get(id(labels)) is labels:  # roots already (see __init__)
                return labels
            roots = torch.from_numpy(self._find_np(_np(labels)))
            self._roots[id(roots)] = roots
            return roots
        roots = self.find_compact(labels)
        return roots.expand(labels.shape) if roots.shape != labels.shape else roots

    def find_compact(self, labels: Tensor) -> Tensor:
        """Like :meth:`find`, with ``labels``' broadcast dims left at size 1."""
        small = _np_compact(labels)
        return torch.from_numpy(self._find_np(small.reshape(-1)).reshape(small.shape))

    def roots(self, labels: Tensor) -> Tensor:
        """The sorted distinct class representatives in ``labels`` (``find(labels).unique()``,
        each broadcast position looked up once: a token-wide label view costs its width)."""
        return torch.from_numpy(sorted_unique(self.find_compact(labels).numpy().reshape(-1)))

    def _find_np(self, flat: np.ndarray) -> np.ndarray:
        parent = self._parent
        roots = parent[flat]
        nxt = parent[roots]
        if _equal(nxt, roots):  # already one hop from its root: nothing to compress
            return roots
        while True:
            roots = nxt
            nxt = parent[roots]
            if _equal(nxt, roots):
                break
        parent[flat] = roots  # path compression
        return roots

    def union(self, a: Tensor, b: Tensor) -> None:
        """Join ``a[i]`` with ``b[i]`` elementwise (after broadcasting); NEUTRAL is skipped."""
        if a is b:
            return
        # positions repeated along a dim add no new pairs: cut broadcast dims for free, and
        # on big tensors also materialised dims along which neither side varies
        if a.shape != b.shape:
            a, b = torch.broadcast_tensors(a, b)
        na, nb = _np_cut_broadcast(_np(a), _np(b))
        if na.size > _BIG:
            for dim in range(na.ndim):
                if na.shape[dim] > 1 and not _np_varies(na, dim) and not _np_varies(nb, dim):
                    na, nb = na[_first_along(na.ndim, dim)], nb[_first_along(nb.ndim, dim)]
        self._union_np(na.reshape(-1), nb.reshape(-1))

    def _union_np(self, a: np.ndarray, b: np.ndarray) -> None:
        # ids are >= 0, so min(a, b) != NEUTRAL iff neither is NEUTRAL
        keep = (a != b) & (np.minimum(a, b) != NEUTRAL)
        kept = np.count_nonzero(keep)  # (cheaper than keep.all() / keep.any())
        if kept < keep.size:
            if not kept:
                return
            a, b = a[keep], b[keep]
        if a.size > _DEDUP:
            width = self._size
            pairs = sorted_unique(a * width + b)  # one int64 key per distinct pair
            a, b = pairs // width, pairs % width
        parent = self._parent
        while True:
            ra, rb = self._find_np(a), self._find_np(b)
            differ = ra != rb
            count = np.count_nonzero(differ)
            if count < differ.size:
                if not count:
                    return
                ra, rb = ra[differ], rb[differ]
            high = np.maximum(ra, rb)
            low = np.minimum(ra, rb)
            self._roots.clear()  # roots are about to be linked: no find result is sure now
            if high.size == 1 or _distinct(high):
                parent[high] = low  # roots link to a smaller root: one pass joins them all
                return
            np.minimum.at(parent, high, low)  # a root linked twice keeps one: go round again

    def one_blocked_class(self, labels: Tensor) -> bool:
        """Whether ``labels`` hold exactly one class, and it is kept whole (a tensor whose
        channels are all fixed: a fused output split at computed sizes, Mamba2's B and C)."""
        roots = self.roots(labels)
        return roots.numel() == 1 and int(roots[0]) in self.blocked_roots()

    def blocked_root_ids(self) -> np.ndarray:
        """The representatives of the classes that hold a block id (without their reasons:
        :meth:`blocked_roots`)."""
        ids = np.fromiter(self.block_reasons, dtype=np.int64, count=len(self.block_reasons))
        return self._find_np(ids) if ids.size else ids

    def blocked_roots(self) -> dict[int, str]:
        """Representative → reason, for every class that holds a block id: the distinct
        reasons of its block ids in the order they were made, the first three named."""
        if not self.block_reasons:
            return {}
        roots = self.blocked_root_ids().tolist()  # (in the order the block ids were made)
        found: dict[int, dict[str, None]] = {}
        for bid, root in zip(self.block_reasons, roots, strict=True):
            found.setdefault(root, {})[self.block_reasons[bid]] = None
        out: dict[int, str] = {}
        for root, reasons in found.items():
            names = list(reasons)
            more = f"; and {len(names) - 3} more" if len(names) > 3 else ""
            out[root] = "; ".join(names[:3]) + more
        return out


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    """``(a == b).all()`` for same-shape arrays (without ``ndarray.all``'s Python wrapper)."""
    return np.count_nonzero(a != b) == 0


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` for a 1-D array, by sorting (NumPy 2's hash-based unique costs
    several times more on the few thousand ids of a label tensor: 110 vs 13 us for 3,000
    ids with NumPy 2.4)."""
    ordered = np.sort(values)
    if ordered.size < 2:
        return ordered
    keep = np.empty(ordered.shape, dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _distinct(values: np.ndarray) -> bool:
    ordered = np.sort(values)
    return not np.count_nonzero(ordered[1:] == ordered[:-1])


def _np(labels: Tensor) -> np.ndarray:
    """The int64 NumPy view of a label tensor (strides kept, nothing copied)."""
    if labels.dtype != torch.long:
        labels = labels.long()
    return labels.numpy()


def _first_along(ndim: int, dim: int) -> tuple[slice, ...]:
    return (slice(None),) * (dim % ndim) + (slice(0, 1),)


def _np_varies(arr: np.ndarray, dim: int) -> bool:
    """True if ``arr`` (not 0-d: every caller skips those) varies along ``dim``."""
    return bool(np.count_nonzero(arr != arr[_first_along(arr.ndim, dim)]))


def cut_broadcast(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Same-shape ``a`` and ``b`` with the dims broadcast (stride 0) in both cut to size 1
    (positions repeated along such a dim add nothing to an elementwise op on the pair)."""
    sa, sb = a.stride(), b.stride()
    if 0 not in sa or 0 not in sb:
        return a, b
    shape = a.shape
    small = [1 if n > 1 and x == 0 and y == 0 else n
             for n, x, y in zip(shape, sa, sb, strict=True)]
    if small == list(shape):
        return a, b
    return (a.as_strided(small, sa, a.storage_offset()),
            b.as_strided(small, sb, b.storage_offset()))


def _np_cut_broadcast(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cut_broadcast` of two same-shape arrays, by NumPy slicing (cheaper than a
    torch ``as_strided``)."""
    if 0 not in a.strides or 0 not in b.strides:
        return a, b
    cut = tuple(slice(0, 1) if n > 1 and x == 0 and y == 0 else slice(None)
                for n, x, y in zip(a.shape, a.strides, b.strides, strict=True))
    return a[cut], b[cut]


def _np_compact(labels: Tensor) -> np.ndarray:
    """``labels`` as NumPy, its broadcast (stride-0) dims cut to size 1."""
    arr = _np(labels)
    return _np_cut_broadcast(arr, arr)[0]


def varies(labels: Tensor, dim: int) -> bool:
    """True if (canonical) ``labels`` are not constant along ``dim``."""
    if labels.dim() == 0 or labels.shape[dim] <= 1 or labels.stride(dim) == 0:
        return False
    # compare each distinct position once, not every broadcast copy
    return _np_varies(_np_compact(labels), dim)


def as_line(labels: Tensor) -> tuple[int, Tensor] | None:
    """(dim, vector) if the values of ``labels`` are ``emit(vector, dim, labels.shape)``:
    constant along every dim but one (compared once per distinct position), else None."""
    if labels.dim() == 0:
        return None
    arr = _np_compact(labels)
    dims = _np_varying(arr)
    if len(dims) != 1:
        return None
    (found,) = dims
    return found, torch.from_numpy(arr[tuple(slice(None) if d == found else 0
                                             for d in range(arr.ndim))])


def varying(labels: Tensor) -> set[int]:
    """``{d for d in range(labels.dim()) if varies(labels, d)}``, compacting ``labels`` once."""
    return _np_varying(_np_compact(labels)) if labels.dim() else set()


def _np_varying(arr: np.ndarray) -> set[int]:
    return {d for d in range(arr.ndim) if arr.shape[d] > 1 and _np_varies(arr, d)}


def rep_along(space: LabelSpace, labels: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Join every label with the others along ``dims`` and return one label per remaining
    position (``dims`` kept with size 1). A NEUTRAL element does not join."""
    canon = space.find_compact(labels)
    if not dims:
        return canon.expand(labels.shape)
    shape = [1 if d in dims else n for d, n in enumerate(labels.shape)]
    if all(canon.shape[d] == 1 for d in dims):  # one label along dims already: no join
        return canon.expand(shape)
    rep = canon.amax(dim=dims, keepdim=True)
    space.union(rep.expand_as(canon), canon)
    return rep.expand(shape)


def consume(space: LabelSpace, labels: Tensor, dim: int) -> Tensor:
    """The label of each index along ``dim`` of a tensor a layer reads as channels.

    All positions of one channel (its spatial positions, tokens, batch items) must leave
    together, so they are joined; the result is a 1-D vector of length ``shape[dim]``.
    """
    dim = dim % labels.dim()
    others = tuple(d for d in range(labels.dim()) if d != dim)
    return rep_along(space, labels, others).reshape(-1)


def in_sorted(values: Tensor | np.ndarray, ids: Tensor | np.ndarray) -> np.ndarray:
    """Boolean NumPy mask: which elements of ``values`` occur in the sorted 1-D ``ids``
    (``torch.isin`` for small id sets, without its per-call dispatch cost)."""
    found, _ = search_sorted(values, ids)
    return found


def search_sorted(values: Tensor | np.ndarray,
                  ids: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which elements of ``values``, flattened, occur in the sorted 1-D ``ids``, and the
    position in ``ids`` of each: where it is or would be inserted)."""
    flat = (values if isinstance(values, np.ndarray) else _np(values)).reshape(-1)
    sorted_ids = ids if isinstance(ids, np.ndarray) else _np(ids)
    if sorted_ids.size == 0:
        return np.zeros(flat.shape, dtype=bool), np.zeros(flat.shape, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, flat)
    found = sorted_ids[np.minimum(pos, sorted_ids.size - 1)] == flat
    return found, pos


def positions_in(values: Tensor, ids: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
    """(indices of the elements of 1-D ``values`` found in the sorted 1-D ``ids``, their
    positions in ``ids`` plus ``offset``)."""
    found, pos = search_sorted(values, ids)
    rows = np.flatnonzero(found)
    pos = pos[rows]
    if offset:
        pos += offset
    return torch.from_numpy(rows), torch.from_numpy(pos)


def emit(vector: Tensor, dim: int, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """A label tensor of ``shape`` whose index ``i`` along ``dim`` carries ``vector[i]``."""
    dim = dim % len(shape)
    view = [1] * len(shape)
    view[dim] = vector.numel()
    return vector.reshape(view).expand(tuple(shape))


def fixed_shape(space: LabelSpace, shape: torch.Size | tuple[int, ...] | list[int],
                reason: str) -> Tensor:
    """Labels of a tensor that carries no channels and whose shape no pruning changes (a
    reduction or product over all its channels): one fresh block id, broadcast. NEUTRAL
    would join nothing, so a channel dim that meets one of its dims position by position
    (``x.sum(1) * gate``) could shrink while this dim cannot."""
    return torch.full((), space.block_id(reason), dtype=torch.long).expand(tuple(shape))
