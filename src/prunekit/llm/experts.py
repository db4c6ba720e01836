"""Expert pruning of mixture-of-experts layers: remove whole experts, ranked by router usage.

Every MoE layer loses the same number of experts, so a Hugging Face config can still
describe the model (``num_local_experts`` / ``num_experts`` / ``n_routed_experts`` are
updated and ``save_pretrained`` → ``from_pretrained`` rebuilds it). By default the experts
dropped are the ones each layer's router puts in its top-k least often on the calibration
tokens (routing frequency; ties broken by the mean routing probability). Expert merging
and search over expert subsets by reconstruction error are not implemented.

An MoE layer is found by its expert weights, not by its class:

* a ``ModuleList`` (or a ``ModuleDict`` keyed ``expert_0 …``, renumbered after the cut)
  child whose name contains ``expert``, directly or one level down (DeepSpeed's
  ``experts.deepspeed_experts``), or
* a child with an int expert count (``num_experts``, ``num_local_experts``, …) whose own
  tensors all lead with it (Transformers 5's stacked ``gate_up_proj``/``down_proj``,
  JetMoE's parallel experts),

and by its router: the one 2-D parameter outside the experts and outside children named
``shared*`` (shared experts are never touched) with a row per expert (a ``weight``, as
``nn.Linear`` holds it) or, under another name, a row or a column per expert (a raw
``w_gate`` used as ``x @ w_gate``, Shazeer et al. 2017); a name like gate/router decides
between several. What is cut: the router's rows or columns, every stacked expert tensor
along its expert dim (per-expert tensors in their submodules too), every tensor of the
layer itself or of the router's module with one dim of the expert count (router bias,
``w_noise``, selection biases such as ``e_score_correction_bias``, per-expert scales and
counts), and the ints named like an expert count that hold the old count. A count held by
a module that contains no MoE layer found is refused: it may be an MoE layer whose experts
drop_experts cannot see.

The pruned model routes as the dense one does with the dropped experts excluded from the
choice: for routers that pick the top-k of softmax or plain logits, exactly the dense model
with the dropped experts' logits at ``-inf`` (tests/llm/test_experts.py and
test_hf_experts.py check this on hand-written layers and 16 Transformers MoE families;
``benchmarks/experts_transformers.py`` on every family of the installed Transformers that
builds from a small config). Code that sizes something from the expert count changes with
it: a capacity of ``factor * tokens / num_experts`` grows, so fewer tokens are dropped.

Refused with the reason: group-limited routing (DeepSeek's ``n_group > 1``: dropping
experts would regroup the rest), integer tables by the router (hash routing's token-to-expert
ids), routers with rows beyond the experts (LongCat's zero-computation experts, Inkling's
shared-expert gates), square router weights, routers or experts tied across layers. Not
offered: different expert counts per layer, expert merging.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from prunekit._caches import copy_model
from prunekit._inputs import run_model, walk_tensors
from prunekit.errors import ConfigError
from prunekit.graph.modes import eval_mode
from prunekit.llm.depth import Calib, _batches, _token_mask
from prunekit.llm.hf_families import check_reloadable

__all__ = ["DroppedExperts", "MoELayer", "drop_experts", "expert_usage", "find_moe_layers"]

COUNT_NAMES = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K_NAMES = ("top_k", "num_experts_per_tok", "topk", "k")
GROUP_NAMES = ("n_group", "num_group")  # group-limited routing (DeepSeek)
Importance = Literal["frequency", "probability"]
IMPORTANCES: tuple[str, ...] = ("frequency", "probability")


@dataclass
class MoELayer:
    """One mixture-of-experts layer: its path and expert count; the router weight (its owner,
    name and the dim that holds the experts: 0 for ``nn.Linear``-style ``[E, H]``, 1 for a
    raw ``[H, E]`` parameter used as ``x @ w_gate``); the tensors that hold a slot per expert
    (``cuts``: owner module, tensor name, dim), containers of expert modules (``lists``:
    owner, name, key prefix for a ``ModuleDict`` or None for a ``ModuleList``), int attributes
    that hold the count, and what dropping experts would break (``problems``)."""

    path: str
    count: int
    router: nn.Module
    router_path: str
    router_name: str
    router_dim: int
    top_k: int | None
    cuts: list[tuple[nn.Module, str, int]] = field(default_factory=list)
    lists: list[tuple[nn.Module, str, str | None]] = field(default_factory=list)
    counters: list[tuple[nn.Module, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def router_weight(self) -> torch.Tensor:
        weight = self.router._parameters[self.router_name]
        assert weight is not None  # found by _router
        return weight


def _tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters(recurse=False)
    yield from module.named_buffers(recurse=False)


def _int_attr(module: nn.Module, names: Sequence[str], value: int | None = None) -> list[str]:
    found = []
    for name in names:
        got = getattr(module, name, None)
        if isinstance(got, int) and not isinstance(got, bool) and (value is None or got == value):
            found.append(name)
    return found


def _stacked_count(child: nn.Module) -> int | None:
    """The expert count of a module whose own tensors all lead with it, one at least 3-D."""
    names = _int_attr(child, COUNT_NAMES)
    tensors = [t for _, t in _tensors(child)]
    if not names or not tensors:
        return None
    size = int(getattr(child, names[0]))
    if all(t.dim() >= 2 and t.shape[0] == size for t in tensors) and any(
            t.dim() >= 3 for t in tensors):
        return size
    return None


def _dict_prefix(experts: nn.ModuleDict) -> str | None:
    """``"expert_"`` for keys ``expert_0 … expert_{n-1}`` in order (what a ModuleDict of
    experts is renumbered with); None for any other keys."""
    keys = list(experts.keys())
    prefix = keys[0][:-1] if keys and keys[0].endswith("0") else None
    ok = prefix is not None and keys == [f"{prefix}{i}" for i in range(len(keys))]
    return prefix if ok else None


def _holds_experts(container: nn.Module) -> bool:
    """A ModuleList of two or more modules, or a ModuleDict keyed ``expert_0 …``."""
    if isinstance(container, nn.ModuleDict):
        return len(container) > 1 and _dict_prefix(container) is not None
    return isinstance(container, nn.ModuleList) and len(container) > 1


def _prefix_of(container: nn.Module) -> str | None:
    return _dict_prefix(container) if isinstance(container, nn.ModuleDict) else None


def _container(name: str, child: nn.Module
               ) -> tuple[int, list[tuple[nn.Module, str, str | None]]] | None:
    """(count, [(owner, name, prefix)] of a container one level down, or [] for ``child``
    itself) when ``child`` (named ``name``, which contains ``expert``) holds one module per
    expert: a ModuleList or numbered ModuleDict, or a wrapper around exactly one such
    container and no tensors (DeepSpeed's ``experts.deepspeed_experts``)."""
    if "expert" not in name.lower():
        return None
    if _holds_experts(child):
        return len(child), []  # type: ignore[arg-type]
    inner = [(n, c) for n, c in child.named_children()
             if isinstance(c, (nn.ModuleList, nn.ModuleDict))]
    if len(inner) == 1 and _holds_experts(inner[0][1]) and not any(True for _ in
                                                                  _tensors(child)):
        key, container = inner[0]
        return len(container), [(child, key, _prefix_of(container))]
    return None


def _expert_children(block: nn.Module
                     ) -> tuple[int | None, list[tuple[str, nn.Module]],
                                list[tuple[nn.Module, str, str | None]]]:
    """The expert count, the children holding experts and the containers of expert modules
    among them (stacked expert tensors hold no container)."""
    count, children, lists = None, [], []
    for name, child in block.named_children():
        if "shared" in name:
            continue
        found = _container(name, child)
        size = found[0] if found is not None else _stacked_count(child)
        if size is None or (count is not None and size != count):
            continue
        count = size
        children.append((name, child))
        if found is not None:
            lists.extend(found[1] or [(block, name, _prefix_of(child))])
    return count, children, lists


_ROUTER_NAME = re.compile(r"gate|rout|wg|classif", re.IGNORECASE)


def _router_area(block: nn.Module, skip: set[str]
                 ) -> Iterator[tuple[str, str, nn.Module]]:
    """(child name or '', path in the block, module) of the block itself and every module
    outside the experts and the shared experts."""
    yield "", "", block
    for name, child in block.named_children():
        if name in skip or "shared" in name:
            continue
        for sub, module in child.named_modules(prefix=name):
            yield name, sub, module


def _router(block: nn.Module, path: str, count: int,
            skip: set[str]) -> tuple[str, str, nn.Module, str, int]:
    """(child name, full path, owner, tensor name, expert dim) of the router weight: the one
    2-D parameter outside the experts with a row per expert (a ``weight``, as nn.Linear
    holds it) or, for another name, a row or a column per expert (a raw ``w_gate`` used as
    ``x @ w_gate``); on the block itself only names like gate/router count, and such a name
    decides between several candidates (Shazeer's ``w_gate`` and ``w_noise``)."""
    found, square = [], []
    for child, sub, module in _router_area(block, skip):
        for name, weight in module.named_parameters(recurse=False):
            if weight.dim() != 2 or (module is block and not _ROUTER_NAME.search(name)):
                continue
            where = ".".join(p for p in (path, sub, name) if p)
            if weight.shape[0] == weight.shape[1] == count:
                square.append(where)
                continue
            dims = (0,) if name == "weight" else (0, 1)
            for dim in dims:
                if weight.shape[dim] == count and weight.shape[1 - dim] > 1:
                    found.append((child, where, module, name, dim))
    if len(found) > 1:
        named = [f for f in found if _ROUTER_NAME.search(f[1]) and "noise" not in f[3]]
        found = named if len(named) == 1 else found
    square = [w for w in square if _ROUTER_NAME.search(w)] if found else square
    if len(found) != 1 or square:
        where = ", ".join(f[1] for f in found) or "none"
        why = (f"; {', '.join(square)} is square ({count} x {count}), so which dim holds the "
               f"experts cannot be told") if square else ""
        raise ConfigError(
            f"MoE layer {path!r} holds {count} experts, but its router could not be told apart: "
            f"drop_experts looks for the one 2-D weight with a row (or, a raw parameter, a "
            f"column) per expert outside the experts and the shared experts; found {where}"
            f"{why}. Routers with rows beyond the experts (zero-computation or shared-expert "
            f"gates) are not supported"
        )
    return found[0]


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every MoE layer of ``model`` with the tensors that hold one slot per expert."""
    layers: list[MoELayer] = []
    claimed: set[int] = set()  # the experts of layers found: not layers themselves
    for path, block in model.named_modules():
        if id(block) in claimed:
            continue
        count, experts, lists = _expert_children(block)
        if count is None:
            continue
        claimed.update(id(m) for _, child in experts for m in child.modules())
        skip = {n for n, _ in experts}
        child, router_path, router, name, dim = _router(block, path, count, skip)
        layer = MoELayer(path, count, router, router_path, name, dim, _top_k(block, router))
        layer.lists = lists
        _collect_cuts(layer, block, experts, block.get_submodule(child) if child else None)
        layers.append(layer)
    return layers


def _top_k(block: nn.Module, router: nn.Module) -> int | None:
    for module in (router, block):
        names = _int_attr(module, TOP_K_NAMES)
        if names:
            return int(getattr(module, names[0]))
    return None


def _collect_cuts(layer: MoELayer, block: nn.Module, experts: list[tuple[str, nn.Module]],
                  router_child: nn.Module | None) -> None:
    """Per-expert tensors: stacked experts' (and their submodules') along dim 0, the router
    weight along its expert dim, and every tensor of the block itself or of the router's
    module with one dim of the expert count (biases, noise weights, selection biases,
    per-expert scales and counts). Integer tensors without such a dim (routing tables) and
    tensors with two such dims are problems, not cuts."""
    count, seen = layer.count, set()

    def cut(owner: nn.Module, name: str, dim: int) -> None:
        if (id(owner), name) not in seen:
            seen.add((id(owner), name))
            layer.cuts.append((owner, name, dim))

    listed = {id(owner.get_submodule(name)) for owner, name, _ in layer.lists}
    for _, child in experts:
        if id(child) in listed or any(id(c) in listed for c in child.children()):
            continue
        for sub in child.modules():  # stacked tensors, and per-expert ones in submodules
            for tensor_name, tensor in _tensors(sub):
                if tensor.dim() >= 1 and tensor.shape[0] == count:
                    cut(sub, tensor_name, 0)
    cut(layer.router, layer.router_name, layer.router_dim)
    area = [block, *(router_child.modules() if router_child is not None else ())]
    for owner in area:
        for name, tensor in _tensors(owner):
            if (id(owner), name) in seen or tensor.dim() == 0:
                continue
            dims = [d for d, size in enumerate(tensor.shape) if size == count]
            label = f"{name} ({tuple(tensor.shape)}, {tensor.dtype})"
            if len(dims) == 1:
                cut(owner, name, dims[0])
            elif len(dims) > 1:
                layer.problems.append(f"{label} has {len(dims)} dims of the expert count, so "
                                      f"which one holds the experts cannot be told")
            elif not (tensor.is_floating_point() or tensor.is_complex()):
                layer.problems.append(f"the router reads an integer table {label}, such as "
                                      f"hash routing's token-to-expert ids, that dropping "
                                      f"experts would leave pointing at removed or "
                                      f"renumbered experts")
    inside_lists = {id(m) for owner, name, _ in layer.lists
                    for m in owner.get_submodule(name).modules()}
    for module in block.modules():
        if id(module) in inside_lists:
            continue
        for name in _int_attr(module, COUNT_NAMES, count):
            layer.counters.append((module, name))
        if module is layer.router and isinstance(module, nn.Linear) and layer.router_dim == 0:
            layer.counters.append((module, "out_features"))


# ---------------------------------------------------------------- router usage

_PRODUCTS = frozenset({F.linear, torch.matmul, torch.mm, torch.bmm, torch.einsum,
                       torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__,
                       torch.Tensor.mm})


class _RouterLogits(TorchFunctionMode):
    """Watches a forward for the router products: the output of ``F.linear``/``matmul``/
    ``einsum`` with an argument that is a router weight, or made from one alone (``.T``,
    ``.float()``, ``F.normalize``), whose last dim is the expert count. Those are the logits
    the router chose from (bias included; a selection bias added later is not)."""

    def __init__(self, layers: Sequence[MoELayer],
                 record: Callable[[MoELayer, torch.Tensor], None]) -> None:
        super().__init__()
        self.record = record
        self.made: dict[int, tuple[torch.Tensor, MoELayer]] = {
            id(layer.router_weight): (layer.router_weight, layer) for layer in layers}

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if func is torch.einsum and args and isinstance(args[-1], (list, tuple)):
            tensors = [t for t in args[-1] if isinstance(t, torch.Tensor)]
        hits = [self.made[id(t)][1] for t in tensors if id(t) in self.made]
        if hits and isinstance(out, torch.Tensor):
            layer = hits[0]
            if len(tensors) == 1:  # a view, cast or normalisation of the router weight
                self.made[id(out)] = (out, layer)
            elif func in _PRODUCTS and out.dim() >= 1 and out.shape[-1] == layer.count:
                self.record(layer, out.detach())
        return out


def expert_usage(model: nn.Module, calib: Calib) -> dict[str, dict[str, tuple[float, ...]]]:
    """For every MoE layer, each expert's routing ``frequency`` (the fraction of calibration
    tokens whose router top-k holds it; padding excluded where a batch dict carries an
    ``attention_mask``) and mean routing ``probability`` (softmax of the router logits).
    The logits are read from the router's own product during the forward (see
    :class:`_RouterLogits`): a selection bias or a temperature the router applies afterwards
    is left out (a temperature changes the probabilities, not the frequencies). A layer whose
    router product is never seen raises ConfigError."""
    layers = find_moe_layers(model)
    if not layers:
        raise ConfigError(_NO_MOE)
    batches = _batches(calib)
    counts = {layer.path: torch.zeros(layer.count, dtype=torch.float64) for layer in layers}
    probs = {layer.path: torch.zeros(layer.count, dtype=torch.float64) for layer in layers}
    tokens = dict.fromkeys(counts, 0)
    mask: list[torch.Tensor | None] = [None]

    def record(layer: MoELayer, logits: torch.Tensor) -> None:
        rows = logits.float().reshape(-1, layer.count)
        keep = mask[0]
        if keep is not None and keep.numel() == rows.shape[0]:
            rows = rows[keep.to(rows.device)]
        k = min(layer.top_k or 1, layer.count)
        top = rows.topk(k, dim=-1).indices.reshape(-1)
        counts[layer.path] += torch.bincount(top.cpu(), minlength=layer.count).double()
        probs[layer.path] += rows.softmax(-1).sum(0).double().cpu()
        tokens[layer.path] += rows.shape[0]

    with torch.no_grad(), eval_mode(model):
        for batch in batches:
            mask[0] = _token_mask(batch)
            with _RouterLogits(layers, record):
                run_model(model, batch)
    unseen = [layer.router_path for layer in layers if not tokens[layer.path]]
    if unseen:
        raise ConfigError(
            f"the router weights {unseen} never entered a matmul/linear/einsum whose output "
            f"has one column per expert during the calibration forward, so their logits could "
            f"not be read (a router that reshapes or combines its weight first); name the "
            f"experts to drop instead, experts={{{layers[0].path!r}: [...]}}")
    usage = {}
    for layer in layers:
        seen = tokens[layer.path]
        usage[layer.path] = {
            "frequency": tuple(float(c) / seen for c in counts[layer.path]),
            "probability": tuple(float(p) / seen for p in probs[layer.path]),
        }
    return usage


_NO_MOE = ("no mixture-of-experts layer found: drop_experts looks for a module holding an "
           "'experts' ModuleList, or a child with an int num_experts whose tensors lead with "
           "it, next to a router weight with one row per expert")


# ---------------------------------------------------------------- choosing and cutting


@dataclass(frozen=True)
class DroppedExperts:
    """The pruned model; per MoE layer (by path) the experts removed (original indices) and,
    when they were ranked, every expert's score; parameter counts before and after."""

    model: nn.Module
    removed: dict[str, tuple[int, ...]]
    usage: dict[str, dict[str, tuple[float, ...]]] | None
    experts_before: int
    experts_after: int
    params_before: int
    params_after: int


def _how_many(experts: int | float, count: int, top_k: int | None) -> int:
    if isinstance(experts, bool) or not isinstance(experts, (int, float)):
        raise TypeError(f"experts must be an int count, a float fraction or a mapping of layer "
                        f"path to expert indices, got {experts!r}")
    if isinstance(experts, float):
        if not 0.0 <= experts < 1.0 or math.isnan(experts):
            raise ConfigError(f"experts={experts}: a fraction must lie in [0, 1)")
        number = round(experts * count)
    else:
        number = experts
    floor = max(top_k or 1, 1)
    if not 0 <= number <= count - floor:
        raise ConfigError(
            f"experts={experts!r}: each MoE layer holds {count} experts and routes every token "
            f"to {floor}, so between 0 and {count - floor} can be removed")
    return number


def _ranked(usage: Mapping[str, tuple[float, ...]], importance: str) -> list[int]:
    """Expert indices, least used first (ties broken by the other statistic)."""
    other = "probability" if importance == "frequency" else "frequency"
    first, second = usage[importance], usage[other]
    return sorted(range(len(first)), key=lambda i: (first[i], second[i], i))


def _chosen_from_mapping(layers: list[MoELayer],
                         experts: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    by_path = {layer.path: layer for layer in layers}
    unknown = sorted(set(experts) - set(by_path))
    if unknown:
        raise ConfigError(f"experts names {unknown}, which are not MoE layers; the MoE layers "
                          f"are {sorted(by_path)}")
    removed = {}
    for layer in layers:
        indices = list(experts.get(layer.path, ()))
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise TypeError(f"experts[{layer.path!r}] must list ints, got {indices!r}")
        chosen = tuple(sorted({i % layer.count for i in indices
                               if -layer.count <= i < layer.count}))
        if len(chosen) != len(indices):
            raise ConfigError(f"experts[{layer.path!r}]={indices!r}: list each expert once, "
                              f"each in [0, {layer.count})")
        _how_many(len(chosen), layer.count, layer.top_k)
        removed[layer.path] = chosen
    return removed


class _Journal:
    """Every assignment made to the model, so a failed prune can be undone."""

    def __init__(self) -> None:
        self.undo: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        table = _table(owner, name)
        old = table[name] if table is not None else getattr(owner, name)
        self.undo.append((owner, name, old))
        if table is not None:
            table[name] = value
        else:
            setattr(owner, name, value)

    def rollback(self) -> None:
        for owner, name, old in reversed(self.undo):
            table = _table(owner, name)
            if table is not None:
                table[name] = old
            else:
                setattr(owner, name, old)
        self.undo.clear()


def _table(owner: Any, name: str) -> dict[str, Any] | None:
    if isinstance(owner, nn.Module):
        for table in (owner._parameters, owner._buffers, owner._modules):
            if name in table:
                return table
    return None


def _cut(layer: MoELayer, keep: list[int], journal: _Journal) -> None:
    for owner, name, dim in layer.cuts:
        old = _table(owner, name)[name]  # type: ignore[index]
        index = torch.tensor(keep, device=old.device)
        new = old.detach().index_select(dim, index).clone()
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        journal.set(owner, name, new)
    for owner, name, prefix in layer.lists:
        container = owner._modules[name]
        if prefix is None:
            assert isinstance(container, nn.ModuleList)
            journal.set(owner, name, type(container)(container[i] for i in keep))
        else:  # a ModuleDict keyed prefix0, prefix1, ...: renumbered
            assert isinstance(container, nn.ModuleDict)
            renumbered = {f"{prefix}{n}": container[f"{prefix}{i}"] for n, i in enumerate(keep)}
            journal.set(owner, name, type(container)(renumbered))
    for owner, name in layer.counters:
        journal.set(owner, name, len(keep))


def _outside_counters(model: nn.Module, layers: list[MoELayer], old: int
                      ) -> list[tuple[nn.Module, str]]:
    """Expert counts held outside the MoE layers: on modules that contain MoE layers (the
    model's own ``num_experts`` for the load-balancing loss). Such a count anywhere else
    belongs to something drop_experts did not find, and is refused."""
    paths = [layer.path for layer in layers]
    inside = {id(m) for path in paths for m in model.get_submodule(path).modules()}
    found: list[tuple[nn.Module, str, str]] = []
    strays: list[tuple[nn.Module, str, str]] = []
    for name, module in model.named_modules():
        if id(module) in inside:
            continue
        for attr in _int_attr(module, COUNT_NAMES, old):
            holds = not name or any(p.startswith(f"{name}.") for p in paths)
            (found if holds else strays).append((module, attr, name))
    if strays:
        module, attr, name = strays[0]
        raise ConfigError(
            f"module {name!r} ({type(module).__name__}) has {attr}={old}, the expert count "
            f"drop_experts would change, but holds none of the MoE layers it found "
            f"({', '.join(paths)}); if it is an MoE layer (experts under a name without "
            f"'expert', or routed some other way) its experts would be left as they are. "
            f"Name its expert list 'experts' so it is found")
    return [(module, attr) for module, attr, _ in found]


def _update_config(model: nn.Module, old: int, new: int, journal: _Journal) -> None:
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        for name in COUNT_NAMES:
            if getattr(cfg, name, None) == old:
                journal.set(cfg, name, new)


def _shared_between_layers(layers: list[MoELayer]) -> None:
    """Refuse a router or experts tied across layers: they would be cut once per layer."""
    owners: dict[int, str] = {}
    for layer in layers:
        held = [(id(_table(o, n)[n]), n) for o, n, _ in layer.cuts]  # type: ignore[index]
        held += [(id(o.get_submodule(n)), n) for o, n, _ in layer.lists]
        for key, name in held:
            where = f"{layer.path}: {name}"
            if key in owners and not owners[key].startswith(f"{layer.path}:"):
                raise ConfigError(
                    f"MoE layers share a tensor or module ({owners[key]} is also {where}); "
                    f"a router or experts tied across layers would be cut once per layer, "
                    f"so drop_experts refuses tied MoE layers")
            owners.setdefault(key, where)


def _check_routing(layers: list[MoELayer], model: nn.Module) -> None:
    """Refuse routers whose choices dropping experts would renumber or regroup."""
    config = getattr(model, "config", None)
    for layer in layers:
        for owner in (layer.router, model.get_submodule(layer.path), config):
            groups = next((getattr(owner, n) for n in GROUP_NAMES
                           if isinstance(getattr(owner, n, None), int)), None)
            if groups is not None and groups > 1:
                raise ConfigError(
                    f"MoE layer {layer.path!r} routes within {groups} expert groups "
                    f"(n_group={groups}); dropping experts would regroup the rest, so "
                    f"drop_experts refuses it. Use a model with n_group=1")
        if layer.problems:
            raise ConfigError(f"MoE layer {layer.path!r}: {layer.problems[0]}; drop_experts "
                              f"refuses the model")


def _outputs(model: nn.Module, batch: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Output paths and shapes of a no-grad forward in eval mode (each module's own mode
    restored after it)."""
    with torch.no_grad(), eval_mode(model):
        out = run_model(model, batch)
    return [(path, tuple(t.shape)) for path, t in walk_tensors(out)]


def _check_outputs(model: nn.Module, batch: Any,
                   reference: list[tuple[str, tuple[int, ...]]]) -> None:
    try:
        got = _outputs(model, batch)
    except Exception as error:
        raise ConfigError(
            f"the model with experts removed fails to run ({type(error).__name__}: {error}); "
            f"its code may route to more experts than are kept (a literal top-k) or loop over "
            f"a literal expert count. Keep more experts, or read the count from "
            f"self.num_experts and top-k from self.top_k") from error
    if got != reference:
        raise ConfigError(f"the model with experts removed gives outputs of shape {got}, the "
                          f"dense model {reference}")


def drop_experts(model: nn.Module, experts: int | float | Mapping[str, Sequence[int]], *,
                 calib: Calib | None = None, importance: Importance = "frequency",
                 inplace: bool = False) -> DroppedExperts:
    """Remove whole experts from every MoE layer.

    ``experts``: how many to remove per layer (an int, or a fraction of each layer's experts),
    chosen by ``importance`` on ``calib`` (token ids ``(n, seqlen)`` or input dicts); or a
    mapping ``{layer path: [expert indices]}`` naming them (the same count in every layer).
    At least ``top_k`` experts stay in each layer. Works on a copy unless ``inplace=True``.
    The pruned model is run on the first calibration batch and must keep its output shapes,
    and a Hugging Face model's updated config must describe its weights; otherwise the error
    is raised and the model is left as it was.
    """
    if importance not in IMPORTANCES:
        raise ConfigError(f"importance={importance!r}; choose one of {IMPORTANCES}")
    layers = find_moe_layers(model)
    if not layers:
        raise ConfigError(_NO_MOE)
    _check_routing(layers, model)
    _shared_between_layers(layers)
    usage = None
    if isinstance(experts, Mapping):
        removed = _chosen_from_mapping(layers, experts)
    else:
        numbers = {layer.path: _how_many(experts, layer.count, layer.top_k) for layer in layers}
        if any(numbers.values()):
            if calib is None:
                raise ConfigError(
                    f"experts={experts!r} ranks experts by router usage, which needs "
                    f"calib=<token ids (n, seqlen) or input dicts>; or name them, e.g. "
                    f"experts={{{layers[0].path!r}: [0]}}")
            usage = expert_usage(model, calib)
        removed = {layer.path: tuple(sorted(_ranked(usage[layer.path], importance)
                                            [:numbers[layer.path]])) if usage else ()
                   for layer in layers}
    counts = sorted({len(r) for r in removed.values()})
    before = [layer.count for layer in layers]
    if len(counts) > 1:
        raise ConfigError(f"experts removes {counts} experts in different layers; "
                          f"remove the same number from every MoE layer")
    uniform = len(set(before)) == 1
    if uniform:
        _outside_counters(model, layers, before[0])  # refuses counts of layers not found
    batches = _batches(calib) if calib is not None else []
    reference = _outputs(model, batches[0]) if batches else None
    params_before = sum(p.numel() for p in model.parameters())
    pruned = model if inplace else copy_model(model)
    target = find_moe_layers(pruned) if not inplace else layers
    journal = _Journal()
    try:
        for layer in target:
            drop = set(removed[layer.path])
            _cut(layer, [i for i in range(layer.count) if i not in drop], journal)
        if uniform:
            new = before[0] - counts[0]
            for module, attr in _outside_counters(pruned, target, before[0]):
                journal.set(module, attr, new)
            _update_config(pruned, before[0], new, journal)
        if hasattr(type(pruned), "from_pretrained") and hasattr(pruned, "config"):
            check_reloadable(pruned)
        if reference is not None:
            _check_outputs(pruned, batches[0], reference)
    except Exception:
        journal.rollback()
        raise
    return DroppedExperts(
        model=pruned, removed=removed, usage=usage,
        experts_before=sum(before),
        experts_after=sum(b - len(removed[layer.path]) for b, layer in zip(before, layers,
                                                                           strict=True)),
        params_before=params_before,
        params_after=sum(p.numel() for p in pruned.parameters()),
    )
