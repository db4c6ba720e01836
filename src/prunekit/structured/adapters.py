"""The layer-adapter seam: per module type, how its channels couple and how to cut them.

A layer adapter (one object per module type, registered with :func:`register_adapter`)
answers four questions, so the tracer, the criteria and the surgery never branch on
layer types:

* ``trace(ctx, call)`` — which input dim it reads as channels, which output dim it makes;
* ``weight_views(module, dim)`` — its tensors as 2-D views ``[units, -1]`` along ``dim``;
* ``prune(module, keep, slicer)`` — cut ``keep[dim]`` indices and update attributes (it
  runs under ``torch.no_grad()``: install new ``nn.Parameter``/buffer tensors, e.g. through
  ``slicer``, rather than tensors computed from the old parameters that should keep an
  autograd history);
* ``sync(module)`` — re-derive attributes from parameter shapes (after a parameter the
  module uses directly was sliced from outside);
* ``axes(module)`` — which axis of which own tensor each dim cuts (for tied weights).

Dimension names are ``"out"`` (made by the layer), ``"in"`` (read by it) and
``"channels"`` (norm layers, where input and output channels are the same).
Adapters for one family of layers live in one file (``adapters_conv``, ``adapters_linear``,
``adapters_norm``); a new family is a new file listed in ``_BUILTIN_FAMILIES`` or imported
before pruning.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, TypeGuard

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from prunekit._weight_norm_grad import leaf_grad_weight
from prunekit.errors import ConfigError
from prunekit.graph.trace import ModuleCall, TraceContext
from prunekit.structured.weight_norm import cut_g, normed_axis

__all__ = [
    "LayerAdapter",
    "ParamSlicer",
    "WeightView",
    "find_adapter",
    "register_adapter",
    "register_adapter_by_name",
    "update_attr",
]

ViewKind = Literal["weight", "bias", "scale"]


@dataclass(frozen=True)
class WeightView:
    """A tensor of a layer seen as ``[units along dim, -1]``; ``grad`` the same view of its
    gradient when one exists (the seam for gradient-based criteria)."""

    tensor: Tensor
    kind: ViewKind
    dim: str
    grad: Tensor | None = None


class LayerAdapter(Protocol):
    """See the module docstring."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None: ...

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]: ...

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None: ...

    def sync(self, module: nn.Module) -> None: ...

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        """``(tensor attr, axis, dim)`` of the layer's own tensors, or None if the layout is
        not a plain axis per dim (then a tied copy of its tensors keeps its shape)."""
        ...


_ADAPTERS: dict[type[nn.Module], LayerAdapter] = {}
_BY_NAME: dict[str, LayerAdapter] = {}
_SUBCLASS_OK: dict[type[nn.Module], bool] = {}
_BUILTIN_FAMILIES = (
    "prunekit.structured.adapters_conv",
    "prunekit.structured.adapters_linear",
    "prunekit.structured.adapters_norm",
    "prunekit.structured.adapters_attention",
    "prunekit.structured.adapters_rnn",
    "prunekit.structured.adapters_hf",
    "prunekit.structured.adapters_timm",
)
_loaded = False


def register_adapter(module_type: type[nn.Module], adapter: LayerAdapter, *,
                     subclasses: bool = True, replace: bool = False) -> None:
    """Use ``adapter`` for ``module_type`` (and, with ``subclasses``, for subclasses that
    keep its ``forward``; a subclass with its own ``forward`` is traced op by op)."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_adapter() needs an nn.Module subclass, got {module_type!r}")
    if module_type in _ADAPTERS and not replace and _ADAPTERS[module_type] is not adapter:
        raise ConfigError(
            f"{module_type.__name__} already has a layer adapter; pass replace=True to override"
        )
    _ADAPTERS[module_type] = adapter
    _SUBCLASS_OK[module_type] = subclasses


def register_adapter_by_name(qualified_name: str, adapter: LayerAdapter) -> None:
    """Use ``adapter`` for the module class ``"package.module.Class"`` (exact type), so an
    optional library's layers get an adapter without importing that library."""
    _BY_NAME[qualified_name] = adapter


def find_adapter(module: nn.Module, *, atomic: bool = True) -> LayerAdapter | None:
    """The adapter for ``module``: its own type's, else the nearest registered base type
    whose ``forward`` it does not override (any base type with ``atomic=False``, for
    ``sync`` after a subclass with its own forward was traced op by op)."""
    global _loaded
    if not _loaded:
        for name in _BUILTIN_FAMILIES:
            importlib.import_module(name)
        _loaded = True
    cls = type(module)
    found = _ADAPTERS.get(cls) or _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
    if found is not None:
        return found
    for base in cls.__mro__[1:]:
        adapter = _ADAPTERS.get(base)
        if adapter is not None:
            if not atomic or (
                _SUBCLASS_OK.get(base) and cls.forward is base.forward  # type: ignore[attr-defined]
            ):
                return adapter
            return None
    return None


class ParamSlicer:
    """Cuts parameters and buffers along an axis; a tensor shared by several modules (tied
    weights) is cut once per axis and the same new tensor is set everywhere it was used.
    A weight-normed tensor is cut through its ``v`` and ``g`` (:mod:`.weight_norm`); one
    that ``torch.nn.utils.prune`` masks, through ``<name>_orig`` and ``<name>_mask`` too (its
    forward pre-hook recomputes the tensor from them), so the kept weights keep their mask."""

    def __init__(self) -> None:
        self._state: dict[int, tuple[Tensor, Tensor, dict[int, Tensor]]] = {}
        self._holders: dict[int, list[tuple[nn.Module, str]]] = {}
        self._normed: dict[int, nn.Module] = {}  # weight norm chains whose v was cut

    def slice(self, module: nn.Module, attr: str, axis: int, index: Tensor) -> None:
        chains = module._modules.get("parametrizations")
        if chains is not None and attr in chains._modules:  # (pruning lets only weight norm in)
            chain = chains._modules[attr]
            assert chain is not None
            self._normed[id(chain)] = chain
            v = chain.original1
            assert isinstance(v, Tensor)
            # v; g follows in finish(), which matches axes with weight norm's dim
            self.slice(chain, "original1", axis % v.dim(), index)
            return
        if module._forward_pre_hooks and masked_by_hook(module, attr):
            self.slice(module, f"{attr}_orig", axis, index)
            self.slice(module, f"{attr}_mask", axis, index)
        original = getattr(module, attr, None)
        if not isinstance(original, Tensor):
            return
        key = id(original)
        state = self._state.get(key)
        orig, current, done = state if state is not None else (original, original, {})
        holders = self._holders.setdefault(key, [])
        if (module, attr) not in holders:
            holders.append((module, attr))
        if axis in done:
            if not torch.equal(done[axis], index):
                raise ValueError(
                    f"tensor {attr!r} of {type(module).__name__} is shared by layers that "
                    f"would keep different indices along axis {axis}"
                )
        else:
            # .to() / .cpu() return the tensor itself when it is there already
            if not (index.is_cpu and current.is_cpu) and index.device != current.device:
                index = index.to(current.device)
            # without grad mode (apply_plan cuts under no_grad) index_select records no
            # graph, so the result equals detach().index_select()
            if current.requires_grad and torch.is_grad_enabled():
                current = current.detach()
            current = current.index_select(axis, index)  # a new tensor
            done[axis] = index if index.is_cpu else index.cpu()
        self._state[key] = (orig, current, done)

    def finish(self) -> None:
        """Install the cut tensors (as Parameters where the original was one)."""
        for chain in self._normed.values():
            self._cut_g(chain)
        self._normed.clear()
        for key, (orig, current, _) in self._state.items():
            if current.dim() >= 4 and current is not orig:
                current = _same_layout(orig, current)
            if is_parameter(orig):
                new: Tensor = nn.Parameter(current, requires_grad=orig.requires_grad)
                new.__dict__.update(orig.__dict__)  # optimizer flags: _no_weight_decay
            else:
                new = current
            for module, attr in self._holders[key]:
                if attr in module._parameters:
                    module._parameters[attr] = new  # type: ignore[assignment]
                elif attr in module._buffers:
                    module._buffers[attr] = new
                else:
                    setattr(module, attr, new)
        self._state.clear()
        self._holders.clear()

    def _cut_g(self, chain: nn.Module) -> None:
        """Queue weight norm's ``g`` to match the cut ``v``, so the kept weights stay exact."""
        g, v = chain.original0, chain.original1
        assert isinstance(g, Tensor) and isinstance(v, Tensor)
        _, v_cut, done = self._state[id(v)]
        axis = normed_axis(chain)
        keep = done.get(axis) if axis is not None else None
        others = any(a != axis for a in done)
        self._state[id(g)] = (g, cut_g(g, v, v_cut, axis, keep, others), {})
        self._holders[id(g)] = [(chain, "original0")]


_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _same_layout(orig: Tensor, cut: Tensor) -> Tensor:
    """``cut`` in ``orig``'s memory format: the weights of a channels-last model stay
    channels-last (``index_select`` returns a contiguous copy, and every conv of the pruned
    model would then convert its weight or its input)."""
    layout = _LAST.get(orig.dim())
    if layout is not None and not orig.is_contiguous() and \
            orig.is_contiguous(memory_format=layout):
        return cut.contiguous(memory_format=layout)
    return cut


def masked_by_hook(module: nn.Module, attr: str) -> bool:
    """Whether ``torch.nn.utils.prune`` masks tensor ``attr`` of ``module``: a forward
    pre-hook then sets it to ``<attr>_orig * <attr>_mask`` (a plain tensor) before every
    call."""
    return any(isinstance(hook, torch_prune.BasePruningMethod) and hook._tensor_name == attr
               for hook in module._forward_pre_hooks.values())


def is_parameter(value: object) -> TypeGuard[nn.Parameter]:
    """``isinstance(value, nn.Parameter)``; an exact Parameter skips the metaclass's
    Python-level ``__instancecheck__``."""
    return type(value) is nn.Parameter or isinstance(value, nn.Parameter)


def update_attr(module: nn.Module, attr: str, value: object) -> None:
    """``setattr(module, attr, value)``, skipped where the instance already holds an equal
    value of the same type: ``sync`` re-derives sizes that the cut has just set, and
    ``nn.Module.__setattr__`` costs ~1.5 us a call."""
    old = module.__dict__.get(attr, _ABSENT)
    if type(old) is not type(value) or old != value:
        setattr(module, attr, value)


_ABSENT = object()


def rows(tensor: Tensor, axis: int) -> Tensor:
    """``tensor`` as ``[size along axis, -1]``."""
    detached = tensor.detach()
    if axis != 0:  # movedim(0, 0) would be a view of the same layout
        detached = detached.movedim(axis, 0)
    return detached.reshape(tensor.shape[axis], -1)


def grad_rows(tensor: Tensor, axis: int) -> Tensor | None:
    grad = tensor.grad
    if grad is None:
        return None
    return (grad if axis == 0 else grad.movedim(axis, 0)).reshape(tensor.shape[axis], -1)


def gradient_of(module: nn.Module, attr: str, tensor: Tensor) -> Tensor | None:
    """The gradient of ``module.<attr>`` (``tensor``, read already): its ``.grad``; for a
    weight weight norm computes (no ``.grad`` of its own), the one its ``g`` and ``v``
    give (:func:`~prunekit._weight_norm_grad.leaf_grad_weight`)."""
    chains = module._modules.get("parametrizations")
    if chains is not None and attr in chains._modules:
        return leaf_grad_weight(chains._modules[attr])  # type: ignore[arg-type]
    return tensor.grad


@dataclass(frozen=True)
class Axis:
    """Tensor ``attr`` of a module runs along dimension ``dim`` on its axis ``axis``."""

    attr: str
    axis: int
    dim: str
    kind: ViewKind


def views_from_axes(module: nn.Module, dim: str, axes: tuple[Axis, ...]) -> list[WeightView]:
    """Weight views of every float parameter in ``axes`` that runs along ``dim`` (of a
    weight-normed one, the effective weight, with the gradient its ``g`` and ``v`` give:
    :func:`gradient_of`; of one
    that ``torch.nn.utils.prune`` masks, the masked weight with ``<attr>_orig``'s gradient,
    which is the masked weight's gradient times the mask)."""
    out = []
    chains = module._modules.get("parametrizations")
    for spec in axes:
        if spec.dim != dim:
            continue
        tensor = getattr(module, spec.attr, None)
        if is_parameter(tensor) or (chains is not None and spec.attr in chains._modules
                                    and isinstance(tensor, Tensor)):
            grad = gradient_of(module, spec.attr, tensor)
            out.append(WeightView(rows(tensor, spec.axis), spec.kind, dim,
                                  None if grad is None else rows(grad, spec.axis)))
        elif isinstance(tensor, Tensor) and module._forward_pre_hooks and \
                masked_by_hook(module, spec.attr):
            orig = getattr(module, f"{spec.attr}_orig")
            out.append(WeightView(rows(tensor, spec.axis), spec.kind, dim,
                                  grad_rows(orig, spec.axis)))
    return out


def axes_list(axes: tuple[Axis, ...]) -> list[tuple[str, int, str]]:
    return [(a.attr, a.axis, a.dim) for a in axes]


def cut_axes(module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer,
             axes: tuple[Axis, ...]) -> None:
    """Cut every tensor in ``axes`` whose dimension has an entry in ``keep``."""
    for spec in axes:
        index = keep.get(spec.dim)
        if index is not None:
            slicer.slice(module, spec.attr, spec.axis, index)
