"""Plans: which indices every layer dimension and parameter keeps, as plain JSON data.

A plan is a dict::

    {"format": "prunekit.structured.plan/1",
     "modules": {"features.0": {"type": "Conv2d", "keep": {"out": [0, 2, ...]}}, ...},
     "params":  {"cls_token": {"sizes": {"2": 64}, "keep": {"2": [0, 1, ...]}}, ...},
     "attrs":   {"blocks.0.attn": {"head_dim": 12}, ...}}

``attrs`` rewrites int attributes that the model's own code uses to size reshapes;
an optional ``"skip": ["layers.3", ...]`` replaces whole blocks by :class:`SkipBlock`
(depth pruning). A module entry may carry ``"swap": "PrunedMultiheadAttention"``: its
layer adapter (a :class:`SwapAdapter`) replaces the module by one that can hold the cut
shapes (torch's ``nn.MultiheadAttention`` cannot lose whole heads) before cutting it; on
replay the same adapter rebuilds it and the class name must match (nothing is imported
by name).

``apply_plan`` (exported as ``replay_plan``) cuts a model accordingly through the layer
adapters; on a freshly built model of the same class it reproduces the pruned
architecture exactly, so a checkpoint needs only the plan and the weights (no pickle).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit._caches import clear_caches
from prunekit.errors import ConfigError
from prunekit.graph.dependency import DependencyGraph
from prunekit.structured.adapters import ParamSlicer, find_adapter
from prunekit.structured.weight_norm import is_weight_normed, legacy_error, legacy_weight_norms

__all__ = ["PLAN_FORMAT", "SkipBlock", "SwapAdapter", "SwapTypeAdapter", "WrapperMismatchError",
           "apply_plan", "build_plan", "plans_of", "record_plans", "replay_plan"]

PLAN_FORMAT = "prunekit.structured.plan/1"


class SkipBlock(nn.Module):
    """Stands in for a removed block: returns its first input unchanged."""

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return x


@runtime_checkable
class SwapAdapter(Protocol):
    """A layer adapter that cuts some modules through a replacement of another class."""

    def swap(self, module: nn.Module, keep: Mapping[str, Tensor]) -> nn.Module | None:
        """The module to install and cut in place of ``module`` (sharing its parameters),
        or None to cut ``module`` itself."""
        ...


@runtime_checkable
class SwapTypeAdapter(SwapAdapter, Protocol):
    """A :class:`SwapAdapter` that can also name the class it would swap in without
    building it (optional: the plan otherwise builds the swap to read its class)."""

    def swap_type(self, module: nn.Module, keep: Mapping[str, Tensor]) -> type[nn.Module] | None:
        """The class ``swap`` would build for these cuts (None: no swap)."""
        ...


def _swap_type(adapter: SwapAdapter, module: nn.Module,
               keep: Mapping[str, Tensor]) -> type[nn.Module] | None:
    if isinstance(adapter, SwapTypeAdapter):
        return adapter.swap_type(module, keep)
    replacement = adapter.swap(module, keep)
    return type(replacement) if replacement is not None else None


_IS_SWAP: dict[type, bool] = {}  # the Protocol check, cached per adapter type


def _swap_adapter(module: nn.Module) -> SwapAdapter | None:
    adapter = find_adapter(module)
    if adapter is None:
        return None
    kind = type(adapter)
    if kind not in _IS_SWAP:
        _IS_SWAP[kind] = isinstance(adapter, SwapAdapter)
    return adapter if _IS_SWAP[kind] else None  # type: ignore[return-value]


def _replacement(module: nn.Module, keep: Mapping[str, Tensor]) -> nn.Module | None:
    """What ``module``'s adapter swaps in for it (None: no SwapAdapter, or no swap)."""
    adapter = _swap_adapter(module)
    return adapter.swap(module, keep) if adapter is not None else None


def is_parametrized(module: nn.Module) -> bool:
    """``parametrize.is_parametrized(module)``, which reads ``module.parametrizations``: set
    by ``register_parametrization`` as a submodule; where it is in none of the places
    attribute lookup tries before ``nn.Module.__getattr__`` (whose miss raises, slowly), the
    answer is False."""
    if "parametrizations" not in module._modules and "parametrizations" not in \
            module.__dict__ and not hasattr(type(module), "parametrizations"):
        return False
    return parametrize.is_parametrized(module)


Indices = dict[tuple[str, str, str], Tensor]  # (section, name, dim or axis) -> keep indices


def build_plan(model: nn.Module, graph: DependencyGraph, masks: Sequence[Tensor]) -> dict[str, Any]:
    """The plan that removes every unit whose mask entry is False."""
    return plan_with_indices(model, graph, masks)[0]


def plan_with_indices(model: nn.Module, graph: DependencyGraph,
                      masks: Sequence[Tensor]) -> tuple[dict[str, Any], Indices]:
    """``build_plan`` and its keep lists as index tensors, which ``apply_plan(...,
    indices=...)`` then uses instead of parsing the lists again."""
    # one flag per unit id: True where the unit is removed (member units are ids < size)
    gone_id = np.zeros(max(graph.trace.space.size, 1), dtype=bool)
    for group, mask in zip(graph.groups, masks, strict=True):
        gone_id[group.units.numpy()[~mask.numpy()]] = True
    # traced modules are the model's own under their named_modules() paths
    traced = graph.trace.modules
    walked: dict[str, nn.Module] | None = None

    def module_at(name: str) -> nn.Module:
        nonlocal walked
        if name in traced:
            return traced[name].module
        if walked is None:
            walked = dict(model.named_modules())
        return walked[name]

    plan: dict[str, Any] = {"format": PLAN_FORMAT, "modules": {}, "params": {}, "attrs": {}}
    indices: Indices = {}
    # every member's removed flags in one lookup; its kept positions are its slice of the
    # kept positions of all members' units together, less its first position
    members = graph.members
    arrays = [member.units.numpy().reshape(-1) for member in members]
    sizes = [a.size for a in arrays]
    ends = np.cumsum(sizes, dtype=np.int64)
    starts = ends - np.array(sizes, dtype=np.int64)
    kept_flag = ~gone_id[np.concatenate(arrays)] if arrays else np.zeros(0, dtype=bool)
    kept_all = np.flatnonzero(kept_flag)
    before = np.concatenate(([0], np.cumsum(kept_flag)))  # kept positions before each one
    rows = zip(members, sizes, starts.tolist(), before[starts].tolist(), before[ends].tolist(),
               strict=True)
    module_entries = plan["modules"]
    for member, size, start, first_kept, end_kept in rows:
        if end_kept - first_kept == size:  # nothing of it is removed
            continue
        kept_np = kept_all[first_kept:end_kept] - start
        keep = torch.from_numpy(kept_np)
        if member.kind == "attr":
            plan["attrs"].setdefault(member.name, {})[member.dim] = int(kept_np.size)
        elif member.kind == "module":
            entry = module_entries.get(member.name)
            if entry is None:
                entry = module_entries[member.name] = {
                    "type": type(module_at(member.name)).__name__, "keep": {}}
            entry["keep"][member.dim] = kept_np.tolist()
            indices["modules", member.name, member.dim] = keep
        else:
            entry = plan["params"].setdefault(member.name, {"sizes": {}, "keep": {}})
            entry["sizes"][str(member.axis)] = int(member.units.numel())
            entry["keep"][str(member.axis)] = kept_np.tolist()
            indices["params", member.name, str(member.axis)] = keep
    for name, entry in plan["modules"].items():
        module = module_at(name)
        adapter = _swap_adapter(module)
        if adapter is None:  # no swap: its keep dict is not built
            continue
        kind = _swap_type(adapter, module, {dim: indices["modules", name, dim]
                                            for dim in entry["keep"]})
        if kind is not None:
            entry["swap"] = kind.__name__
    return plan, indices


def _index(values: Any, where: str) -> Tensor:
    # type() rather than isinstance(): bool is an int subclass and must not pass
    if not isinstance(values, list) or not set(map(type, values)) <= {int}:
        raise ConfigError(f"plan entry {where} must be a list of non-negative ints")
    index = torch.tensor(values, dtype=torch.long)
    if index.numel() and int(index.min()) < 0:
        raise ConfigError(f"plan entry {where} must be a list of non-negative ints")
    if index.numel() and not bool((index[1:] > index[:-1]).all()):
        raise ConfigError(f"plan entry {where} must be sorted and without repeats")
    return index


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        said = f"plan names module {name!r}, which the model does not have; "
        wrapped = _wrapped(model, name)
        if wrapped is not None:
            raise WrapperMismatchError(said + wrapped) from exc
        raise ConfigError(said + "replay it on a model built like the pruned one") from exc


class WrapperMismatchError(ConfigError):
    """A plan made on a wrapper that holds the model as ``.module`` replayed on the bare
    model, or the other way round (its message says which and the fix)."""


_WRAPPERS = "nn.DataParallel, DistributedDataParallel, AveragedModel"


def _wrapped(model: nn.Module, name: str) -> str | None:
    """The fix for a plan made on a wrapper that holds the model as ``.module`` and replayed
    on the bare model, or the other way round; None for any other missing module."""
    inner = name.removeprefix("module.")
    if inner != name and not hasattr(model, "module") and _has(model, inner):
        return (f"the plan was made on a wrapper that holds the model as .module ({_WRAPPERS}): "
                f"load into the same wrapper (e.g. nn.DataParallel(MyNet())), or prune the "
                f"wrapped model (wrapper.module) and save that")
    wrapped = getattr(model, "module", None)
    if isinstance(wrapped, nn.Module) and _has(wrapped, name):
        return (f"base_model wraps the model as .module ({_WRAPPERS}) and the plan was made "
                f"on the bare model: pass base_model.module")
    return None


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError as exc:
        raise ConfigError(f"plan names parameter {name!r}, which the model does not have") from exc
    if not isinstance(getattr(module, attr, None), Tensor):
        raise ConfigError(f"plan names parameter {name!r}, which the model does not have")
    return module, attr


def _attribute_value(module: nn.Module, name: str, attr: str, value: Any) -> tuple[str, Any]:
    """``(attribute, new value)`` for the plan's ``attrs`` entry ``attr: value`` of module
    ``name``: an int attribute (``num_heads``), or one int of a tuple or list attribute
    (``bias_shape[2]``: the attribute with that element replaced)."""
    base, index = attr, None
    if attr.endswith("]") and "[" in attr:
        base, _, rest = attr.partition("[")
        index = int(rest[:-1]) if rest[:-1].isdigit() else None
    current = getattr(module, base, None)
    holder = current[index] if isinstance(current, (tuple, list)) and index is not None \
        and index < len(current) else current
    if not isinstance(holder, int) or isinstance(holder, bool) \
            or not isinstance(value, int) or value < 1:
        raise ConfigError(f"plan sets {name}.{attr}={value!r}, but the model's {name!r} has "
                          f"no int attribute {attr!r} (or the value is not a positive int)")
    if index is None or not isinstance(current, (tuple, list)):
        return base, value
    items = list(current)
    items[index] = value
    return base, type(current)(items)


def apply_plan(model: nn.Module, plan: Mapping[str, Any], *,
               indices: Mapping[tuple[str, str, str], Tensor] | None = None) -> None:
    """Cut ``model`` in place as ``plan`` says (see the module docstring). ``indices``: the
    plan's keep lists as tensors, from :func:`plan_with_indices` for this very plan.

    Raises ConfigError, before anything is changed, if the plan does not fit the model.
    """
    if not isinstance(plan, Mapping) or plan.get("format") != PLAN_FORMAT:
        raise ConfigError(
            f"plan must be a dict with format={PLAN_FORMAT!r} (PruneResult.plan or the "
            f"plan.json of a saved result), got {type(plan).__name__}"
        )
    slicer = ParamSlicer()
    cuts: list[tuple[Any, nn.Module, dict[str, Tensor]]] = []
    swaps: list[tuple[nn.Module, nn.Module]] = []
    entries = plan.get("modules", {})
    # one walk instead of a get_submodule per entry (a shared module's later paths and
    # unknown names still go through get_submodule)
    modules = dict(model.named_modules())
    for name, entry in entries.items():
        module = modules[name] if name in modules else _submodule(model, name)
        if type(module).__name__ != entry.get("type"):
            raise ConfigError(f"plan expects {name!r} to be a {entry.get('type')}, "
                              f"the model has a {type(module).__name__}")
        adapter = find_adapter(module)
        if adapter is None:
            raise ConfigError(f"no layer adapter for {type(module).__name__} at {name!r}")
        if is_parametrized(module) and not is_weight_normed(module):
            raise ConfigError(f"layer {name!r} carries a parametrization (a sparsity mask?); "
                              f"bake it in first with prunekit.strip(model), then prune")
        legacy = legacy_weight_norms([(name, module)])
        if legacy:
            raise legacy_error(legacy)
        keep = {dim: indices["modules", name, dim] if indices is not None
                else _index(v, f"{name}.{dim}") for dim, v in entry["keep"].items()}
        if "swap" in entry:
            original, module = module, _swapped(name, module, keep, entry["swap"])
            swaps.append((original, module))
            adapter = find_adapter(module)
        cuts.append((adapter, module, keep))
    params = []
    for name, entry in plan.get("params", {}).items():
        module, attr = _owner(model, name)
        tensor = getattr(module, attr)
        for key, keep in entry.get("keep", {}).items():
            axis = int(key) if str(key).isdigit() else -1
            size = entry.get("sizes", {}).get(key)
            if not 0 <= axis < tensor.dim() or tensor.shape[axis] != size:
                raise ConfigError(f"plan entry for parameter {name!r} (axis {key}, size "
                                  f"{size}) does not fit its shape {tuple(tensor.shape)}")
            index = (indices["params", name, key] if indices is not None
                     else _index(keep, f"{name}[{key}]"))
            params.append((module, attr, axis, index))
    skips = []
    for name in plan.get("skip", []):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"plan 'skip' entries must be module paths, got {name!r}")
        _submodule(model, name)
        parent, _, child = name.rpartition(".")
        skips.append((_submodule(model, parent) if parent else model, child))
    attrs = []
    for name, entry in plan.get("attrs", {}).items():
        module = modules[name] if name in modules else _submodule(model, name)
        for attr, value in entry.items():
            _attribute_value(module, name, attr, value)  # checked before any change
            attrs.append((module, name, attr, value))
    installed: list[tuple[nn.Module, nn.Module]] = []
    try:
        with torch.no_grad():  # the cuts are new tensors, not graph nodes (ParamSlicer.slice)
            for old, new in swaps:
                _replace_module(model, old, new)
                installed.append((old, new))
            for adapter, module, keep in cuts:
                adapter.prune(module, keep, slicer)
            for module, attr, axis, index in params:
                slicer.slice(module, attr, axis, index)
    except BaseException as exc:
        for old, new in reversed(installed):
            _replace_module(model, new, old)
        if isinstance(exc, (IndexError, RuntimeError, ValueError)):
            raise ConfigError(f"plan does not fit this model: {exc}") from exc
        raise
    slicer.finish()
    for parent_module, child in skips:
        setattr(parent_module, child, SkipBlock())
    for module, name, attr, value in attrs:  # one at a time: two may edit one tuple
        setattr(module, *_attribute_value(module, name, attr, value))
    clear_caches(modules.values())  # tensors cached at the old widths (prunekit._caches)
    for adapter, module, _ in cuts:
        adapter.sync(module)
    for module, *_ in params:
        owner_adapter = find_adapter(module, atomic=False)
        if owner_adapter is not None:
            owner_adapter.sync(module)


def _swapped(name: str, module: nn.Module, keep: Mapping[str, Tensor],
             recorded: Any) -> nn.Module:
    """The replacement the plan recorded for ``module``, rebuilt by its layer adapter."""
    replacement = _replacement(module, keep)
    got = None if replacement is None else type(replacement).__name__
    if not isinstance(recorded, str) or got != recorded:
        raise ConfigError(f"plan swaps {name!r} ({type(module).__name__}) for a {recorded!r}, "
                          f"but its layer adapter gives {got!r}; replay the plan with the "
                          f"prunekit version that wrote it")
    if not name:
        raise ConfigError(f"plan swaps the model itself for a {recorded}; only a submodule "
                          f"can be replaced — wrap the {type(module).__name__} in a module")
    assert replacement is not None
    if find_adapter(replacement) is None:
        raise ConfigError(f"no layer adapter for {recorded} (the replacement at {name!r})")
    return replacement


def _replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``model`` holds ``old`` (a shared module at several paths too)."""
    for module in list(model.modules()):
        for child_name, child in list(module._modules.items()):  # named_children() dedups
            if child is old:
                setattr(module, child_name, new)


def replay_plan(model: nn.Module, plan: Mapping[str, Any]) -> None:
    """Replay a pruning plan on a freshly built model, in place (used by ``prunekit.load``)."""
    apply_plan(model, plan)


# the plans that made a model from its freshly built form, oldest first: a model pruned again
# (iterative pruning, or pruning a model pk.load gave) saves and reloads through all of them
_PLANS = "_prunekit_plans"


def plans_of(model: nn.Module) -> list[dict[str, Any]]:
    """The plans ``prune`` (or ``pk.load``) applied to make ``model``, oldest first."""
    return list(model.__dict__.get(_PLANS, ()))


def record_plans(model: nn.Module, plans: list[dict[str, Any]]) -> None:
    """Note on ``model`` the plans that made it (a new list: copies keep their own)."""
    model.__dict__[_PLANS] = list(plans)
