"""The shape reads of a trace, and the widths its model's code compares.

:func:`size_read` is the callback the recorder calls for every shape read
(``t.shape``, ``t.size()``, ``t.size(d)``, ``t.numel()``): a tracked tensor's shape comes back as
:class:`~prunekit.graph.sizes.SizeInt` values. Where the model's code then finds such an
int, exact and counting channels, equal to a plain int with ``==`` or ``!=`` (the rule of
:mod:`prunekit.graph.sizes`' docstring), :func:`_compared_in` notes the comparison and
:func:`_judge_comparison` judges it when the trace ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from prunekit.graph.callers import calling_module, comparison_read
from prunekit.graph.sizes import SizeInt, channel_line

if TYPE_CHECKING:
    from prunekit.graph.trace import TraceContext

__all__ = ["size_read"]


def size_read(ctx: TraceContext) -> Callable[[Any, tuple[Any, ...], dict[str, Any], Any], Any]:
    """The callback the recorder calls for a shape read: SizeInts for a tracked tensor's
    shape, ``out`` unchanged for any other."""
    tracker = ctx.sizes
    tracker.compared = lambda size, frame: _compared_in(ctx, size, frame)

    def read(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
        tensor = args[0] if args else None
        if not isinstance(tensor, Tensor):
            return out
        labels = ctx.size_labels(tensor)
        if labels is None:
            return out
        return tracker.read(labels, func, args, kwargs, out)

    return read


def _compared_in(ctx: TraceContext, size: SizeInt, frame: FrameType) -> None:
    """The code of ``frame`` found ``size``, exact, equal to a plain int with ``==`` or
    ``!=`` (PVT's ``if num_channels != self.num_channels: raise``). Where ``size`` counts
    channels, a comparison of user code (not torch's or prunekit's, and not a dict lookup or
    ``in``) must hold after pruning too: if its expression reads exactly one int attribute of
    the module whose code it is that holds the value, that attribute is bound to the
    channels (surgery rewrites it with the channels kept); else (a literal, an int from
    elsewhere, two attributes holding it) the channels are kept whole, with the reason."""
    if not ctx.recording:  # inside an atomic module: its handler judges it
        return
    read = comparison_read(frame)
    if read is None:
        return
    path, module = calling_module(ctx, frame)
    value, attrs = int(size), vars(module)
    holders = sorted(k for k in read if type(attrs.get(k)) is int and attrs[k] == value)
    at = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
    ctx.at_end.append(
        lambda: _judge_comparison(ctx, size, path, holders, at))


def _judge_comparison(ctx: TraceContext, size: SizeInt, path: str, holders: list[str],
                      at: str) -> None:
    """:func:`_compared_in`'s verdict, when the trace has ended: the dims the size counts
    may carry no channels by then (SelectiveKernel's ``x.shape[1] == self.num_paths`` counts
    a stack of branches whose channels a later sum over them joins)."""
    with torch._C.DisableTorchFunction():  # label arithmetic, not ops of the model
        line, sources = channel_line(ctx, size)
        if not sources:  # batch, tokens, spatial: no pruning changes them
            return
        if len(holders) == 1 and line is not None:
            ctx.bind_attribute(path, holders[0], line)
            return
        where = f"the code of module {path!r}" if path else "the model's code"
        if len(holders) > 1:
            what = f"int attributes {', '.join(map(repr, holders))}, which all hold it"
        elif holders:
            what = f"int attribute {holders[0]!r}, but the channels also vary along dims it " \
                   f"does not count"
        else:
            what = ("a literal or an int from elsewhere (the comparison reads no int attribute "
                    "of the module holding it)")
        reason = (f"{where} compares a channel width read from a tensor's shape "
                  f"({int(size)}) with {what} ({at}); pruning would change the comparison, "
                  f"so those channels are kept whole; compare the width with exactly one int "
                  f"attribute of that module holding it (c != self.num_channels) for surgery "
                  f"to rewrite that attribute")
        for labels in [line] if line is not None else sources:
            ctx.block(labels, reason)
