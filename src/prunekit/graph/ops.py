"""The op-handler seam: how a torch function maps channel labels from its inputs to outputs.

An op handler is any callable ``handler(ctx, call)`` that reads the label tensors of the
call's inputs through ``ctx.labels(t)``, joins what must be removed together through
``ctx.space.union`` / ``ctx.block``, and sets a label tensor for every output tensor with
``ctx.set_labels``. Handlers are registered by op *name* (``"add"``, ``"max_pool2d"``), so
``torch.add``, ``Tensor.add``, ``Tensor.__add__``, ``Tensor.add_`` and ``F.x`` share one.
A handler that meets a call it cannot map raises :class:`OpNotMappable`; the tracer then
treats the call like an unknown op.

Families live one per file (``ops_shape``, ``ops_slice``, ``ops_reshape``, ``ops_pointwise``,
``ops_reduce``, ``ops_matmul``, ``ops_grouped``); a new family is a new file that calls
:func:`register_op` and is listed in ``_BUILTIN_FAMILIES`` (or imported by the caller before
tracing).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor
from torch.utils._pytree import tree_flatten

from prunekit.errors import ConfigError

if TYPE_CHECKING:
    from prunekit.graph.trace import TraceContext

__all__ = [
    "LIKE",
    "REGION_POOLS",
    "OpCall",
    "OpHandler",
    "OpNotMappable",
    "call_tensors",
    "get_op_handler",
    "on_cpu",
    "op_name",
    "register_op",
    "tensors_in",
]


# torchvision's compiled region pooling (Faster/Mask/Keypoint R-CNN's MultiScaleRoIAlign):
# each region's output keeps the feature map's channels, even for no regions at all
REGION_POOLS = frozenset(("roi_align", "roi_align.default", "roi_pool", "roi_pool.default"))

# tensors of another's shape: they read its shape, not its values (graph/ops_pointwise.py)
LIKE = ("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like")


@dataclass(frozen=True)
class OpCall:
    """One recorded call: the function, its normalised name, arguments and result."""

    func: Callable[..., Any]
    name: str
    display: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out: Any

    def arg(self, position: int, name: str, default: Any = None) -> Any:
        """The argument passed at ``position`` or as ``name=`` (``default`` if neither)."""
        return self.args[position] if len(self.args) > position else \
            self.kwargs.get(name, default)


class OpHandler(Protocol):
    """Maps labels through one call (see the module docstring)."""

    def __call__(self, ctx: TraceContext, call: OpCall) -> None: ...


class OpNotMappable(Exception):
    """Raised by a handler for a call it cannot map (the tracer reports it as unsupported).

    ``makes_channels``: the op would have produced channels of its own (a conv whose weight
    is computed), so refusing it loses them even when none of its inputs is prunable."""

    def __init__(self, message: str, *, makes_channels: bool = False) -> None:
        super().__init__(message)
        self.makes_channels = makes_channels


_HANDLERS: dict[str, OpHandler] = {}
_BUILTIN_FAMILIES = (
    "prunekit.graph.ops_shape",
    "prunekit.graph.ops_slice",
    "prunekit.graph.ops_gather",
    "prunekit.graph.ops_reshape",
    "prunekit.graph.ops_pointwise",
    "prunekit.graph.ops_reduce",
    "prunekit.graph.ops_matmul",
    "prunekit.graph.ops_grouped",
    "prunekit.graph.ops_norm",
    "prunekit.graph.ops_einsum",
    "prunekit.graph.ops_layer",
    "prunekit.graph.ops_unfold",
    "prunekit.graph.ops_fft",
    "prunekit.graph.ops_packed",
    "prunekit.graph.ops_factory",
    "prunekit.graph.ops_autograd",
)
_loaded = False


def register_op(names: str | Iterable[str], handler: OpHandler, *,
                replace: bool = False) -> None:
    """Route the op ``names`` (one normalised name, see :func:`op_name`, or several) to
    ``handler``. Nothing is registered if any name is refused."""
    listed = [names] if isinstance(names, str) else list(names)
    for name in listed:
        if not isinstance(name, str) or not callable(handler):
            raise TypeError(f"register_op() needs op names (str) and a callable handler, got "
                            f"{name!r} and {type(handler).__name__}")
        if name in _HANDLERS and not replace and _HANDLERS[name] is not handler:
            raise ConfigError(
                f"op {name!r} already has a handler; pass replace=True to override it"
            )
    for name in listed:
        _HANDLERS[name] = handler


def get_op_handler(name: str) -> OpHandler | None:
    """The handler registered for the normalised op ``name``, or None."""
    global _loaded
    if not _loaded:
        for module in _BUILTIN_FAMILIES:
            importlib.import_module(module)
        _loaded = True
    return _HANDLERS.get(name)


def op_name(func: Callable[..., Any]) -> tuple[str, str]:
    """(normalised name, display name) of a torch function, tensor method or property.

    ``Tensor.__iadd__``, ``Tensor.__radd__``, ``Tensor.add_`` and ``torch.add`` all
    normalise to ``"add"``; the display name keeps the original spelling for errors.
    """
    raw = getattr(func, "__name__", None) or repr(func)
    if raw == "__get__":  # a property such as Tensor.T or Tensor.data
        raw = getattr(getattr(func, "__self__", None), "__name__", raw)
    owner = getattr(func, "__module__", None) or "torch.Tensor"
    if getattr(func, "__objclass__", None) is Tensor or owner.startswith("torch._C"):
        owner = "torch.Tensor"
    display = f"{owner}.{raw}"
    name = raw
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name not in {"getitem", "setitem", "matmul"} and name[:1] in {"i", "r"}:
            stripped = name[1:]
            if stripped in _DUNDER_BASES:
                name = stripped
        if name in {"rmatmul", "imatmul"}:
            name = "matmul"
    elif name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name, display


_DUNDER_BASES = {
    "add", "sub", "mul", "truediv", "floordiv", "div", "pow", "mod", "and", "or",
    "xor", "lshift", "rshift",
}


def tensors_in(tree: Any) -> list[Tensor]:
    """Every tensor inside a nested tuple/list/dict (in pytree order).

    Called for every op of a trace, so plain containers are walked directly; only other
    types go through the (much slower) general pytree flattening.
    """
    found: list[Tensor] = []
    if type(tree) is tuple:  # an op's args: mostly tensors and scalars, rarely nested
        for item in tree:
            if isinstance(item, Tensor):
                found.append(item)
            elif item is not None and not isinstance(item, _SCALARS):
                _collect(item, found)
        return found
    _collect(tree, found)
    return found


_SCALARS = (int, float, bool, str, slice, type(...))


def call_tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Tensor]:
    """``tensors_in((args, kwargs))``, in the same order: the args' tensors, then those of the
    kwargs' values (mostly none: ``F.relu(x, inplace=False)``), with no walk of the pair."""
    found = tensors_in(args)
    if kwargs:
        found += tensors_in(tuple(kwargs.values()))
    return found


def on_cpu(tree: Any) -> Any:
    """``tree`` with every tensor in nested tuples/lists/dicts on the CPU, where label
    tensors live: an op replayed on labels takes its index tensors from the model's own
    arguments, which may be on a GPU. Returns ``tree`` itself when nothing needed moving."""
    if isinstance(tree, Tensor):
        return tree if tree.is_cpu else tree.cpu()
    if isinstance(tree, (tuple, list)):
        moved = [on_cpu(item) for item in tree]
        if all(new is old for new, old in zip(moved, tree, strict=True)):
            return tree
        return type(tree)(moved) if type(tree) in (tuple, list) else type(tree)(*moved)
    if isinstance(tree, dict):
        items = {key: on_cpu(value) for key, value in tree.items()}
        return tree if all(items[k] is v for k, v in tree.items()) else items
    return tree


def _collect(obj: Any, found: list[Tensor]) -> None:
    if isinstance(obj, Tensor):
        found.append(obj)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            _collect(item, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _collect(item, found)
    elif obj is not None and not isinstance(obj, _SCALARS):
        leaves, _ = tree_flatten(obj)
        found.extend(leaf for leaf in leaves if isinstance(leaf, Tensor))
