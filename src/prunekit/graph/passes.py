"""The forward passes of a trace: the walk of the module tree it labels, one traced pass in
one mode, and whether layers were left unvisited (so that a pass in training mode must
follow, for layers only training runs)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from prunekit._inputs import ExampleInputs, grad_mode, run_model, walk_tensors
from prunekit.graph.hooks import Recorder
from prunekit.graph.modes import model_mode
from prunekit.graph.records import ModuleHandler
from prunekit.graph.replay import Recording

if TYPE_CHECKING:
    from prunekit.graph.trace import TraceContext

__all__ = ["eager_compiled", "layer_roots", "traced_pass", "unread_outputs", "unvisited_layers",
           "walk_modules"]


def walk_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``list(model.named_modules(remove_duplicate=False))`` without its nested generators
    (25 vs 42 us on 90 modules); a module that overrides ``named_modules`` gets it called."""
    found: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> bool:
        if type(module).named_modules is not _NAMED_MODULES:
            return False
        found.append((prefix, module))
        for name, child in module._modules.items():
            if child is not None and not visit(f"{prefix}.{name}" if prefix else name, child):
                return False
        return True

    return found if visit("", model) else list(model.named_modules(remove_duplicate=False))


_NAMED_MODULES = nn.Module.named_modules


def eager_compiled() -> contextlib.AbstractContextManager[object]:
    """Functions the model runs through ``torch.compile`` (torchvision's ``roi_align``
    fallback, a user's compiled helper) run eagerly, op by op, so the trace sees their ops
    and the forward check neither compiles again at the pruned widths nor bypasses the
    values it puts back. Where nothing imported dynamo, nothing can be compiled: no-op."""
    if "torch._dynamo" not in sys.modules:
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


def traced_pass(ctx: TraceContext, model: nn.Module, example_inputs: ExampleInputs,
                handlers: Callable[[nn.Module], ModuleHandler | None], recorder: Recorder,
                modules: list[nn.Module], *, training: bool
                ) -> list[tuple[str, tuple[int, ...]]]:
    """One forward pass under the hooks in one mode; the model's outputs keep their shape.
    ``recorder.data`` then holds what its data-dependent calls gave (graph/replay.py)."""
    recorder.data = Recording(model)
    with grad_mode(example_inputs, modules), model_mode(model, training, modules), \
            ctx.hooks(model, handlers), recorder, eager_compiled():
        out = run_model(model, example_inputs)
    for path, tensor in walk_tensors(out):
        ctx.unread.discard(id(tensor))
        if ctx.watched:  # a model output is read (a fixed part of channels returned)
            ctx._read_watched([tensor])
        if ctx.is_tracked(tensor):
            ctx.block(ctx.labels(tensor), f"model {path}")  # "model output[0]"
    return [(path, tuple(tensor.shape)) for path, tensor in walk_tensors(out)]


def unvisited_layers(ctx: TraceContext,
                     handlers: Callable[[nn.Module], ModuleHandler | None]) -> bool:
    """True if a layer with a handler, not inside one that ran, never ran, or a module that
    ran (not a layer) never read one of its own parameters (Shazeer's ``w_noise``, read in
    training mode only)."""
    return next(unvisited(ctx, handlers), None) is not None


# the dims of a layer that its output carries (not a dim the layer reads itself, as an
# attention's heads)
_OUTPUTS = frozenset(("out", "hidden", "proj"))


def unread_outputs(ctx: TraceContext) -> bool:
    """True if a layer ran and nothing read its output channels: no other layer's dim or
    weight axis (a functional ``F.linear``), no model output and no other layer's output
    (attention's q and k meet only each other) holds any of them. In eval mode that is a
    branch computed for nothing, most likely one that training reads (deep supervision
    summed in only while training: ``return self.head(a + b) if self.training else
    self.head(a)``); the training pass then couples what training reads. (Channels a
    reduction alone reads, ``b.sum(1)``, look unread too: the cost is that extra pass.)"""
    roots, dim_of, names, made = layer_roots(ctx)
    sizes = np.bincount(dim_of, minlength=len(names))
    outputs = made & np.isin(names, list(_OUTPUTS)) & (sizes > 1)
    mine = outputs[dim_of]
    if not mine.any():
        return False
    own, own_dim = roots[mine], dim_of[mine]
    # the roots that two of these outputs hold (q and k): each (root, output) pair once
    pairs = np.unique(own * len(names) + own_dim)
    distinct, holders = np.unique(pairs // len(names), return_counts=True)
    axes = [labels.numpy() for param in ctx.params.values()
            for labels, _ in param.axes.values()]
    weights = ctx.space.find(torch.from_numpy(np.concatenate(axes))).numpy() if axes \
        else roots[:0]
    readers = np.concatenate([roots[~made[dim_of]], ctx.space.blocked_root_ids(), weights,
                              distinct[holders > 1]])
    read_dims = np.unique(own_dim[np.isin(own, readers)])
    return bool(read_dims.size < np.count_nonzero(outputs))


def layer_roots(ctx: TraceContext) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """The channel roots of the traced layers' dims, all in one array (one lookup); the
    index of the dim each belongs to; and per dim its name and whether the layer made it
    (its output's, an attention's heads) rather than reads it."""
    dims = [(name, dim) for record in ctx.modules.values() for name, dim in record.dims.items()]
    arrays = [dim.labels.reshape(-1).numpy() for _, dim in dims]
    sizes = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
    roots = ctx.space.find(torch.from_numpy(np.concatenate(arrays))).numpy() if arrays \
        else np.zeros(0, dtype=np.int64)
    made = np.fromiter((dim.root for _, dim in dims), dtype=bool, count=len(dims))
    return roots, np.repeat(np.arange(len(dims)), sizes), [name for name, _ in dims], made


def unvisited(ctx: TraceContext,
              handlers: Callable[[nn.Module], ModuleHandler | None]) -> Iterator[str]:
    """The paths of the modules :func:`unvisited_layers` looks for. (The traced layers are
    ``ctx.modules``; the walk lists a module's children right after it.)"""
    inside: str | None = None  # "path." of the last traced layer: its children did not run
    ran = ctx._calls.entered
    read: set[int] | None = None  # ids of the parameters the trace recorded, when needed
    for name, module in ctx._named_modules:
        if inside is not None and name.startswith(inside):
            continue
        if name in ctx.modules:
            inside = f"{name}."
        elif name and handlers(module) is not None:
            yield name
        elif (name in ran or not name) and module._parameters:
            read = {id(r.tensor) for r in ctx.params.values()} if read is None else read
            if any(param is not None and (param.is_floating_point() or param.is_complex())
                   and id(param) not in read
                   for param in module._parameters.values()):
                yield name
