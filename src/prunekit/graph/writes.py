"""Writes the traced forward makes into the model's own tensors, undone when the trace ends.

Some forwards write their parameters or buffers: a data-dependent initialisation (Glow's
ActNorm sets ``loc`` and ``scale`` from the first batch it sees, then ``initialized``), a
mask multiplied into a weight in place (``self.weight.data *= self.mask``). Tracing runs the
user's model, which ``prune`` promises to leave as it was, so the first in-place write into
each such tensor saves its value, and :meth:`WriteGuard.restore` puts every saved value back.
A write is an in-place method or operator on the tensor itself (``copy_``, ``fill_``,
``+=``, ``t[i] = v``) or on its ``.data``, an assignment to its ``.data`` (MoCo's momentum
update, ``p.data = p.data * m + q.data * (1 - m)``), an ``out=`` argument, or the running
statistics ``F.batch_norm`` updates; ops inside layers that have a handler are not seen
(their modules write nothing in eval mode but an embedding with ``max_norm``, whose weight
is saved up front; the training-mode pass restores buffers itself).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["WriteGuard", "names_of", "restored"]

# in-place operators spelt as dunders: __iadd__, __imul__, ... and __setitem__
_INPLACE_DUNDERS = frozenset(
    f"__i{base}__" for base in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow",
                                "and", "or", "xor", "lshift", "rshift", "matmul")
) | {"__setitem__"}
_WRITE, _ALIAS, _READ = 1, 2, 0


def _kind(func: Callable[..., Any]) -> int:
    name = getattr(func, "__name__", "")
    if name in ("__get__", "__set__"):  # a property: Tensor.data is the tensor's storage
        owner = getattr(func, "__self__", None)
        if getattr(owner, "__name__", "") != "data":
            return _READ
        # reading it gives the same storage under another name; assigning it (an EMA as
        # ``p.data = m * p.data + ...``) gives the tensor another storage
        return _ALIAS if name == "__get__" else _WRITE
    if name in _INPLACE_DUNDERS or (name.endswith("_") and not name.endswith("__")):
        return _WRITE
    return _READ


class WriteGuard:
    """The model's tensors by id (``watched``: aliases from ``.data`` map to their tensor)
    and the values saved before the first write into each."""

    def __init__(self) -> None:
        self.watched: dict[int, Tensor] = {}
        self._saved: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self._kinds: dict[Any, int] = {}

    def watch(self, tensor: Tensor) -> None:
        self.watched.setdefault(id(tensor), tensor)

    def save(self, tensor: Tensor) -> None:
        """Save ``tensor`` now: a layer with a handler writes it, unseen (an embedding with
        ``max_norm`` renormalises the rows it looks up in place)."""
        if id(tensor) not in self._saved:
            # the storage itself too: ``.data =`` may swap it for another (restore swaps back)
            self._saved[id(tensor)] = (tensor, tensor.detach(), tensor.detach().clone())

    def before(self, func: Callable[..., Any], first: Tensor) -> bool:
        """Called before ``func`` runs with a watched tensor ``first`` as its first argument:
        saves the tensor if ``func`` writes into it; True if the result is an alias to watch
        (then pass it to :meth:`alias`)."""
        kind = self._kinds.get(func)
        if kind is None:
            kind = self._kinds[func] = _kind(func)
        if kind == _WRITE:
            self.save(self.watched[id(first)])
        return kind == _ALIAS

    def into_arguments(self, func: Callable[..., Any], args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> None:
        """Save the watched tensors a call writes that are not its first argument: an
        ``out=`` tensor, and the running statistics ``F.batch_norm`` / ``F.instance_norm``
        update in training mode (AdaBN-style code calls it so in eval)."""
        targets = [kwargs.get("out")]
        if func is F.batch_norm or func is F.instance_norm:
            targets += [args[i] if len(args) > i else kwargs.get(name)
                        for i, name in ((1, "running_mean"), (2, "running_var"))]
        for target in targets:
            tensor = self.watched.get(id(target)) if isinstance(target, Tensor) else None
            if tensor is not None:
                self.save(tensor)

    def alias(self, out: Any, first: Tensor) -> None:
        if isinstance(out, Tensor):
            self.watched[id(out)] = self.watched[id(first)]

    def written(self) -> tuple[Tensor, ...]:
        """The tensors written into, in the order of their first write."""
        return tuple(tensor for tensor, _, _ in self._saved.values())

    def restore(self) -> None:
        """Put back every saved value, into the storage each tensor had when saved."""
        with torch.no_grad():
            for tensor, storage, value in self._saved.values():
                if tensor.data_ptr() != storage.data_ptr() or tensor.shape != storage.shape:
                    tensor.data = storage
                tensor.copy_(value)


def names_of(model: nn.Module, tensors: tuple[Tensor, ...]) -> tuple[str, ...]:
    """The paths of ``tensors`` among ``model``'s parameters and buffers."""
    if not tensors:
        return ()
    wanted = {id(t) for t in tensors}
    found = [name for named in (model.named_parameters(), model.named_buffers())
             for name, tensor in named if id(tensor) in wanted]
    return tuple(dict.fromkeys(found))


@contextlib.contextmanager
def restored(model: nn.Module, names: tuple[str, ...]) -> Iterator[None]:
    """Put back, when the block exits, the values that ``model``'s tensors at ``names`` hold
    now (a forward that ``prune`` runs writes into them again: the user's model, or the
    pruned model before its check)."""
    guard = WriteGuard()
    for name in names:
        prefix, _, key = name.rpartition(".")
        tensor = getattr(model.get_submodule(prefix) if prefix else model, key, None)
        if isinstance(tensor, Tensor):
            guard.save(tensor)
    try:
        yield
    finally:
        guard.restore()
