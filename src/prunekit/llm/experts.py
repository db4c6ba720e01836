"""Expert pruning of mixture-of-experts layers: remove whole experts, ranked by router usage.

Every MoE layer loses the same number of experts, so a Hugging Face config can still
describe the model (``num_local_experts`` / ``num_experts`` / ``n_routed_experts`` are
updated and ``save_pretrained`` → ``from_pretrained`` rebuilds it). By default the experts
dropped are the ones each layer's router puts in its top-k least often on the calibration
tokens (routing frequency; ties broken by the mean routing probability). Expert merging
and search over expert subsets by reconstruction error are not implemented.

An MoE layer is found by its expert weights, not by its class:

* a ``ModuleList`` child named ``experts`` (one module per expert), or
* a child that has an int ``num_experts`` and whose own tensors all lead with that count
  (Transformers 5's stacked ``gate_up_proj``/``down_proj``, JetMoE's parallel experts),

and by its router: the one 2-D parameter with a row per expert (``nn.Linear``-style) or a
column per expert (a raw ``w_gate`` used as ``x @ w_gate``, Shazeer et al. 2017) outside
the experts and outside children named ``shared*`` (shared experts are never touched); a
name like gate/router decides between several. What is cut: the router's rows or columns
(and bias), every stacked expert tensor along its expert dim (per-expert tensors in their
submodules too), the other per-expert tensors of the router module (``w_noise``, selection
biases such as ``e_score_correction_bias``, per-expert counts), and the ints named like an
expert count that hold the old count. The pruned router chooses among the kept experts
exactly as the dense router does when the dropped experts' logits are ``-inf``
(tests/llm/test_experts.py and test_hf_experts.py check this on hand-written layers and 16
Transformers MoE families; ``benchmarks/experts_transformers.py`` on every family of the
installed Transformers that builds from a small config).

Refused with the reason: group-limited routing (DeepSeek's ``n_group > 1``: dropping
experts would regroup the rest), integer tables by the router (hash routing's token-to-expert
ids), routers with rows beyond the experts (LongCat's zero-computation experts, Inkling's
shared-expert gates). Not offered: different expert counts per layer, expert merging.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from prunekit._inputs import run_model
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
    (``cuts``: owner module, tensor name, dim), ModuleLists of experts, int attributes that
    hold the count, and integer tensors by the router that dropping experts would break."""

    path: str
    count: int
    router: nn.Module
    router_path: str
    router_name: str
    router_dim: int
    top_k: int | None
    cuts: list[tuple[nn.Module, str, int]] = field(default_factory=list)
    lists: list[tuple[nn.Module, str]] = field(default_factory=list)
    counters: list[tuple[nn.Module, str]] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)

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
    """``num_experts`` of a module whose own tensors all lead with it, one at least 3-D."""
    names = _int_attr(child, ("num_experts",))
    tensors = [t for _, t in _tensors(child)]
    if not names or not tensors:
        return None
    size = int(getattr(child, names[0]))
    if all(t.dim() >= 2 and t.shape[0] == size for t in tensors) and any(
            t.dim() >= 3 for t in tensors):
        return size
    return None


def _expert_children(block: nn.Module) -> tuple[int | None, list[tuple[str, nn.Module]]]:
    """The expert count and the children holding experts (a ModuleList named ``experts``, or
    stacked expert tensors)."""
    count, children = None, []
    for name, child in block.named_children():
        if "shared" in name:
            continue
        if isinstance(child, nn.ModuleList):
            size = len(child) if name == "experts" and len(child) > 1 else None
        else:
            size = _stacked_count(child)
        if size is None or (count is not None and size != count):
            continue
        count = size
        children.append((name, child))
    return count, children


_ROUTER_NAME = re.compile(r"gate|rout|wg|classif", re.IGNORECASE)
_BLOCK_PER_EXPERT = re.compile(r"gate|rout|noise|bias|expert", re.IGNORECASE)


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
    2-D parameter with ``count`` rows (or, a raw parameter, columns) outside the experts; a
    name like gate/router decides between several (Shazeer's ``w_gate`` and ``w_noise``)."""
    found = []
    for child, sub, module in _router_area(block, skip):
        for name, weight in module.named_parameters(recurse=False):
            dims = [d for d in (0, 1) if weight.dim() == 2 and weight.shape[d] == count
                    and weight.shape[1 - d] > 1]
            if len(dims) == 1 and (module is not block or _ROUTER_NAME.search(name)):
                where = ".".join(p for p in (path, sub, name) if p)
                found.append((child, where, module, name, dims[0]))
    if len(found) > 1:
        named = [f for f in found if _ROUTER_NAME.search(f[1].rpartition(".")[0] + "." + f[3])
                 and "noise" not in f[3]]
        found = named if len(named) == 1 else found
    if len(found) != 1:
        where = ", ".join(f[1] for f in found) or "none"
        raise ConfigError(
            f"MoE layer {path!r} holds {count} experts, but its router could not be told apart: "
            f"drop_experts looks for the one 2-D weight with a row (or column) per expert "
            f"outside the experts and the shared experts; found {where}. Routers with rows "
            f"beyond the experts (zero-computation or shared-expert gates) are not supported"
        )
    return found[0]


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every MoE layer of ``model`` with the tensors that hold one slot per expert."""
    layers = []
    for path, block in model.named_modules():
        count, experts = _expert_children(block)
        if count is None:
            continue
        skip = {n for n, _ in experts}
        child, router_path, router, name, dim = _router(block, path, count, skip)
        layer = MoELayer(path, count, router, router_path, name, dim, _top_k(block, router))
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
    count, seen = layer.count, set()

    def cut(owner: nn.Module, name: str, dim: int) -> None:
        if (id(owner), name) not in seen:
            seen.add((id(owner), name))
            layer.cuts.append((owner, name, dim))

    for name, child in experts:
        if isinstance(child, nn.ModuleList):
            layer.lists.append((block, name))
        else:  # stacked tensors, and per-expert ones in submodules (Ergo's expert norms)
            for sub in child.modules():
                for tensor_name, tensor in _tensors(sub):
                    if tensor.dim() >= 1 and tensor.shape[0] == count:
                        cut(sub, tensor_name, 0)
    cut(layer.router, layer.router_name, layer.router_dim)
    bias = layer.router._parameters.get("bias")
    if layer.router_dim == 0 and bias is not None and tuple(bias.shape) == (count,):
        cut(layer.router, "bias", 0)
    area = [block, *(router_child.modules() if router_child is not None else ())]
    for owner in area:
        for name, tensor in _tensors(owner):
            dims = [d for d, size in enumerate(tensor.shape) if size == count]
            if not (tensor.is_floating_point() or tensor.is_complex()):
                if len(dims) == 1:  # a per-expert count
                    cut(owner, name, dims[0])
                else:  # expert ids, or what is made of them
                    layer.tables.append(f"{name} ({tuple(tensor.shape)}, {tensor.dtype})")
            elif (tensor.dim() <= 2 and len(dims) == 1
                  and (owner is not block or _BLOCK_PER_EXPERT.search(name))):
                cut(owner, name, dims[0])
    inside_lists = {id(m) for _, c in experts if isinstance(c, nn.ModuleList)
                    for m in c.modules()}
    for module in block.modules():
        if id(module) in inside_lists:
            continue
        for name in _int_attr(module, COUNT_NAMES, count):
            layer.counters.append((module, name))
        if module is layer.router and isinstance(module, nn.Linear) and layer.router_dim == 0:
            layer.counters.append((module, "out_features"))


# ---------------------------------------------------------------- router usage


def _router_logits(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    weight = layer.router_weight.detach()
    matrix = weight.T if layer.router_dim == 0 else weight  # (H, E)
    rows = x.detach().reshape(-1, matrix.shape[0]).to(matrix.dtype)
    logits = rows @ matrix
    bias = layer.router._parameters.get("bias")
    if layer.router_dim == 0 and bias is not None and tuple(bias.shape) == (layer.count,):
        logits = logits + bias.detach()
    return logits.float()


def expert_usage(model: nn.Module, calib: Calib) -> dict[str, dict[str, tuple[float, ...]]]:
    """For every MoE layer, each expert's routing ``frequency`` (the fraction of calibration
    tokens whose router top-k holds it; padding excluded where a batch dict carries an
    ``attention_mask``) and mean routing ``probability`` (softmax of the router logits).
    The router's own selection bias, if any, is left out."""
    layers = find_moe_layers(model)
    if not layers:
        raise ConfigError(_NO_MOE)
    batches = _batches(calib)
    counts = {layer.path: torch.zeros(layer.count, dtype=torch.float64) for layer in layers}
    probs = {layer.path: torch.zeros(layer.count, dtype=torch.float64) for layer in layers}
    tokens = dict.fromkeys(counts, 0)
    mask: list[torch.Tensor | None] = [None]

    def hook_for(layer: MoELayer) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            logits = _router_logits(layer, args[0])
            keep = mask[0]
            if keep is not None and keep.numel() == logits.shape[0]:
                logits = logits[keep.to(logits.device)]
            k = min(layer.top_k or 1, layer.count)
            top = logits.topk(k, dim=-1).indices.reshape(-1)
            counts[layer.path] += torch.bincount(top.cpu(), minlength=layer.count).double()
            probs[layer.path] += logits.softmax(-1).sum(0).double().cpu()
            tokens[layer.path] += logits.shape[0]
        return hook

    handles = [layer.router.register_forward_pre_hook(hook_for(layer)) for layer in layers]
    try:
        with torch.no_grad(), eval_mode(model):
            for batch in batches:
                mask[0] = _token_mask(batch)
                run_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    usage = {}
    for layer in layers:
        seen = max(tokens[layer.path], 1)
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
    if importance not in IMPORTANCES:
        raise ConfigError(f"importance={importance!r}; choose one of {IMPORTANCES}")
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
    for owner, name in layer.lists:
        old_list = owner._modules[name]
        assert isinstance(old_list, nn.ModuleList)
        journal.set(owner, name, nn.ModuleList(old_list[i] for i in keep))
    for owner, name in layer.counters:
        journal.set(owner, name, len(keep))


def _update_outside(model: nn.Module, layers: list[MoELayer], old: int, new: int,
                    journal: _Journal) -> None:
    """Expert counts held outside the MoE layers (the model's own ``num_experts`` for the
    load-balancing loss) and in the Hugging Face config."""
    inside = {id(m) for layer in layers for m in model.get_submodule(layer.path).modules()}
    for module in model.modules():
        if id(module) not in inside:
            for name in _int_attr(module, COUNT_NAMES, old):
                journal.set(module, name, new)
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        for name in COUNT_NAMES:
            if getattr(cfg, name, None) == old:
                journal.set(cfg, name, new)


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
        if layer.tables:
            raise ConfigError(
                f"MoE layer {layer.path!r} routes with an integer table "
                f"({', '.join(layer.tables)}), such as hash routing's token-to-expert ids; "
                f"dropping experts would leave it pointing at removed or renumbered experts, "
                f"so drop_experts refuses the model")


def _outputs(model: nn.Module, batch: Any) -> list[torch.Size]:
    with torch.no_grad(), eval_mode(model):
        out = run_model(model, batch)
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return [logits.shape]
    if isinstance(out, torch.Tensor):
        return [out.shape]
    if isinstance(out, (tuple, list)):
        return [o.shape for o in out if isinstance(o, torch.Tensor)]
    return []


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
    batches = _batches(calib) if calib is not None else []
    reference = _outputs(model, batches[0]) if batches else None
    params_before = sum(p.numel() for p in model.parameters())
    pruned = model if inplace else copy.deepcopy(model)
    target = find_moe_layers(pruned) if not inplace else layers
    journal = _Journal()
    try:
        for layer in target:
            drop = set(removed[layer.path])
            _cut(layer, [i for i in range(layer.count) if i not in drop], journal)
        if len(set(before)) == 1:
            _update_outside(pruned, target, before[0], before[0] - counts[0], journal)
        if hasattr(type(pruned), "from_pretrained") and hasattr(pruned, "config"):
            check_reloadable(pruned)
        if reference is not None:
            got = _outputs(pruned, batches[0])
            if got != reference:
                raise ConfigError(f"the model with experts removed gives outputs of shape "
                                  f"{got}, the dense model {reference}")
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
