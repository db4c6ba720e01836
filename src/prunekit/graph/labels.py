"""Channel labels: one integer id per channel, and a vectorised union-find that couples them.

The tracer shadows every activation with an int64 *label tensor* of the same shape. An
element's label names the channel it belongs to; two labels that must be removed together
(a conv's output channel and the next conv's input channel, two residual partners, ...)
are joined in the union-find. After tracing, each equivalence class is one prunable *unit*.

Label 0 (``NEUTRAL``) marks elements that belong to no channel (constants, tensors created
inside ``forward``); it is never joined. A *block* id is a fresh label carrying a reason;
every unit that contains one keeps its shape (model inputs/outputs, unsupported ops, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor

NEUTRAL = 0


class LabelSpace:
    """Allocates channel ids and joins them; all operations work on whole tensors of ids."""

    def __init__(self) -> None:
        self._parent = torch.arange(1024, dtype=torch.long)
        self._size = 1  # id 0 is NEUTRAL
        self.block_reasons: dict[int, str] = {}

    @property
    def size(self) -> int:
        """Number of ids allocated so far (including NEUTRAL)."""
        return self._size

    def new_ids(self, count: int) -> Tensor:
        """``count`` fresh ids, each its own class."""
        start, stop = self._size, self._size + count
        if stop > self._parent.numel():
            capacity = max(stop, 2 * self._parent.numel())
            grown = torch.arange(capacity, dtype=torch.long)
            grown[: self._size] = self._parent[: self._size]
            self._parent = grown
        self._size = stop
        return torch.arange(start, stop, dtype=torch.long)

    def block_id(self, reason: str) -> int:
        """A fresh id that marks whatever joins it as unprunable, for ``reason``."""
        bid = int(self.new_ids(1)[0])
        self.block_reasons[bid] = reason
        return bid

    def block(self, labels: Tensor, reason: str) -> None:
        """Make every channel in ``labels`` unprunable, remembering ``reason``."""
        real = labels[labels != NEUTRAL]
        if real.numel() == 0:
            return
        bid = self.block_id(reason)
        self.union(real.unique(), torch.full((1,), bid, dtype=torch.long))

    def find(self, labels: Tensor) -> Tensor:
        """The class representative of every id in ``labels`` (same shape)."""
        small, expanded = _compact(labels)
        if expanded:  # look up each distinct position once, then broadcast back
            return self.find(small).expand(labels.shape)
        parent = self._parent
        flat = labels.reshape(-1)
        roots = parent.index_select(0, flat)
        while True:
            nxt = parent.index_select(0, roots)
            if torch.equal(nxt, roots):
                break
            roots = nxt
        if flat.numel():
            parent[flat] = roots  # path compression
        return roots.reshape(labels.shape)

    def union(self, a: Tensor, b: Tensor) -> None:
        """Join ``a[i]`` with ``b[i]`` elementwise (after broadcasting); NEUTRAL is skipped."""
        a, b = torch.broadcast_tensors(a, b)
        for dim in range(a.dim()):  # positions repeated along a dim add no new pairs
            if a.shape[dim] > 1 and not varies(a, dim) and not varies(b, dim):
                a, b = a.narrow(dim, 0, 1), b.narrow(dim, 0, 1)
        a, b = a.reshape(-1), b.reshape(-1)
        keep = (a != NEUTRAL) & (b != NEUTRAL) & (a != b)
        if not bool(keep.any()):
            return
        width = self._size
        pairs = (a[keep] * width + b[keep]).unique()  # one int64 key per distinct pair
        a, b = pairs // width, pairs % width
        while True:
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not bool(differ.any()):
                return
            high = torch.maximum(ra, rb)[differ]
            low = torch.minimum(ra, rb)[differ]
            self._parent.scatter_reduce_(0, high, low, reduce="amin")

    def blocked_roots(self) -> dict[int, str]:
        """Representative → reason, for every class that holds a block id."""
        if not self.block_reasons:
            return {}
        ids = torch.tensor(list(self.block_reasons), dtype=torch.long)
        roots = self.find(ids).tolist()
        out: dict[int, str] = {}
        for bid, root in zip(self.block_reasons, roots, strict=True):
            out.setdefault(root, self.block_reasons[bid])
        return out


def _compact(labels: Tensor) -> tuple[Tensor, bool]:
    """``labels`` with its broadcast (stride-0) dims cut to size 1, and whether any was."""
    small = labels
    for dim in range(labels.dim()):
        if labels.shape[dim] > 1 and labels.stride(dim) == 0:
            small = small.narrow(dim, 0, 1)
    return small, small is not labels


def varies(labels: Tensor, dim: int) -> bool:
    """True if (canonical) ``labels`` are not constant along ``dim``."""
    if labels.dim() == 0 or labels.shape[dim] <= 1 or labels.stride(dim) == 0:
        return False
    return bool((labels != labels.narrow(dim, 0, 1)).any())


def rep_along(space: LabelSpace, labels: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Join every label with the others along ``dims`` and return one label per remaining
    position (``dims`` kept with size 1). A NEUTRAL element does not join."""
    canon, _ = _compact(space.find(labels))
    if not dims:
        return canon.expand(labels.shape)
    rep = canon.amax(dim=dims, keepdim=True)
    space.union(rep.expand_as(canon), canon)
    shape = [1 if d in dims else n for d, n in enumerate(labels.shape)]
    return rep.expand(shape)


def consume(space: LabelSpace, labels: Tensor, dim: int) -> Tensor:
    """The label of each index along ``dim`` of a tensor a layer reads as channels.

    All positions of one channel (its spatial positions, tokens, batch items) must leave
    together, so they are joined; the result is a 1-D vector of length ``shape[dim]``.
    """
    dim = dim % labels.dim()
    others = tuple(d for d in range(labels.dim()) if d != dim)
    return rep_along(space, labels, others).reshape(-1)


def emit(vector: Tensor, dim: int, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """A label tensor of ``shape`` whose index ``i`` along ``dim`` carries ``vector[i]``."""
    dim = dim % len(shape)
    view = [1] * len(shape)
    view[dim] = vector.numel()
    return vector.reshape(view).expand(tuple(shape))
