"""``prune``: structured pruning end to end — trace, group, score, allocate, plan, cut, check."""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import numbers
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, TypeVar, cast

import torch
from torch import nn

from prunekit._buffers import preserved_buffers
from prunekit._caches import copy_model, recomputed_caches
from prunekit._inputs import ExampleInputs, copied_inputs, grad_mode, run_model, walk_tensors
from prunekit._warn import warn
from prunekit.allocation.ratio import Allocation, _allocate, allocate, unit_width
from prunekit.errors import ConfigError, check_choice, check_fraction
from prunekit.graph.coverage import Coverage, coverage_report
from prunekit.graph.dependency import DependencyGraph, Group, build_groups
from prunekit.graph.mirror import mirror_unreached
from prunekit.graph.modes import eval_mode, model_mode
from prunekit.graph.numbers import changed_attribute_numbers
from prunekit.graph.passes import eager_compiled
from prunekit.graph.replay import Recording, replayed
from prunekit.graph.trace import trace
from prunekit.graph.writes import restored
from prunekit.importance.group import (
    Aggregation,
    GroupCriterion,
    MemberViews,
    Normalization,
    get_group_criterion,
    score_groups,
)
from prunekit.metrics.profile import Profile, profile
from prunekit.structured.adapters import WeightView, find_adapter, grad_rows, rows
from prunekit.structured.plan import (
    apply_plan,
    is_parametrized,
    plan_with_indices,
    plans_of,
    record_plans,
)
from prunekit.structured.repair import CheckFailed, without_breaking_groups
from prunekit.structured.weight_norm import is_weight_normed, legacy_error, legacy_weight_norms

__all__ = ["Analysis", "PruneResult", "analyze", "prune"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _gc_paused(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``func`` with the cyclic garbage collector off (and back on after, if it was on),
    outside inference mode.

    A prune allocates many small short-lived objects (label tensors, NumPy arrays, records)
    that reference counting frees; with the collector on they trigger collections that walk
    every object of the process (torch's own included), up to tens of ms each, and find
    next to nothing to free."""
    @functools.wraps(func)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        # (and outside inference mode: tensors the surgery makes under it would be inference
        # tensors, which a pruned model could never be fine-tuned with)
        with torch.inference_mode(False):
            if not gc.isenabled():
                return func(*args, **kwargs)
            gc.disable()
            try:
                return func(*args, **kwargs)
            finally:
                gc.enable()
    return paused


class PruneResult:
    """The pruned model, its plan (JSON data), before/after profiles and the coverage report.

    ``before`` and ``after`` are measured (one flop-counting forward pass each) when first
    read, not by ``prune`` itself: a caller that only wants the model, such as a training
    callback pruning every epoch, does not pay for them. ``before`` describes the model as
    ``prune`` found it (its module tree is kept, sharing the tensors), ``after`` the pruned
    model; read them before changing tensors of either in place. With ``inplace=True`` the
    result holds the replaced (unpruned) tensors until ``before`` and ``coverage`` are read
    or the result is dropped.
    """

    __slots__ = ("_after", "_before", "_coverage", "groups", "model", "plan")

    def __init__(self, model: nn.Module, plan: dict[str, Any],
                 before: Profile | Callable[[], Profile], after: Profile | Callable[[], Profile],
                 coverage: Coverage | Callable[[], Coverage], groups: int) -> None:
        self.model = model
        self.plan = plan
        self._before = before
        self._after = after
        self._coverage = coverage
        self.groups = groups

    @property
    def coverage(self) -> Coverage:
        """Which parameters are prunable, kept whole or unused, and why (built on first
        access from the dependency graph, which the result holds until then)."""
        if not isinstance(self._coverage, Coverage):
            self._coverage = self._coverage()
        return self._coverage

    @property
    def before(self) -> Profile:
        """Profile of the model before pruning (measured on first access)."""
        if not isinstance(self._before, Profile):
            self._before = self._before()
        return self._before

    @property
    def after(self) -> Profile:
        """Profile of the pruned model (measured on first access)."""
        if not isinstance(self._after, Profile):
            self._after = self._after()
        return self._after

    def __repr__(self) -> str:
        return (f"PruneResult(model={type(self.model).__name__}, groups={self.groups}, "
                f"modules cut={len(self.plan.get('modules', {}))})")

    @property
    def params_kept(self) -> float:
        """Fraction of parameters kept (after / before)."""
        return self.after.total_params / max(1, self.before.total_params)

    @property
    def macs_kept(self) -> float:
        """Fraction of MACs kept (after / before)."""
        return self.after.macs / max(1, self.before.macs)

    def summary(self) -> str:
        """A few lines: groups, parameters and MACs before → after, what was kept whole."""
        fixed = self.coverage.fixed
        lines = [
            f"{self.groups} prunable dependency groups, "
            f"{len(self.plan['modules']) + len(self.plan['params'])} layers and tensors cut",
            f"params {self.before.total_params:,} -> {self.after.total_params:,} "
            f"({self.params_kept:.1%} kept)",
            f"MACs   {self.before.macs:,} -> {self.after.macs:,} ({self.macs_kept:.1%} kept)",
        ]
        if fixed:
            lines.append(f"{len(fixed)} parameters kept whole (see .coverage), e.g. "
                         + "; ".join(f"{k}: {v}" for k, v in list(fixed.items())[:2]))
        return "\n".join(lines)


@dataclass(frozen=True)
class Analysis:
    """What ``analyze`` found: the dependency groups, one score vector per group (aligned
    with ``group.units``) and the coverage report."""

    graph: DependencyGraph
    scores: list[torch.Tensor]
    coverage: Coverage


@_gc_paused
def analyze(model: nn.Module, example_inputs: ExampleInputs, *,
            importance: str | GroupCriterion = "l2",
            ignore: Iterable[nn.Module] = (), strict: bool = True, aggregation: Aggregation = "sum",
            normalization: Normalization = "none", seed: int = 0) -> Analysis:
    """Trace, group and score ``model`` without changing it."""
    graph, scores = _graph_and_scores(model, example_inputs, importance=importance,
                                      ignore=ignore, strict=strict, aggregation=aggregation,
                                      normalization=normalization, seed=seed)
    return Analysis(graph, scores, coverage_report(model, graph))


def _graph_and_scores(model: nn.Module, example_inputs: ExampleInputs, *,
                      importance: str | GroupCriterion, ignore: Iterable[nn.Module],
                      strict: bool, aggregation: Aggregation, normalization: Normalization,
                      seed: int) -> tuple[DependencyGraph, list[torch.Tensor]]:
    criterion = get_group_criterion(importance)
    lazy = next((name for name, param in model.named_parameters()
                 if isinstance(param, nn.parameter.UninitializedParameter)), None)
    if lazy is not None:
        raise ConfigError(
            f"model: parameter {lazy!r} belongs to a lazy layer (nn.LazyLinear, "
            f"nn.LazyConv2d, ...) that has not run yet, so it has no shape; run the model "
            f"once on an input (with torch.no_grad(): model(x)) to materialise it, then prune")
    meta = next((name for name, param in model.named_parameters() if param.is_meta), None)
    if meta is not None:
        raise ConfigError(
            f"model: parameter {meta!r} is on the meta device, which holds shapes but no "
            f"values; importance scores and the forward check need the weights. Materialise "
            f"the model first (model.to_empty(device='cpu'), then load_state_dict(...)), or "
            f"build it on a real device")
    # before the trace, which would stop at the torch._weight_norm its hooks run
    legacy = legacy_weight_norms(model.named_modules())
    if legacy:
        raise legacy_error(legacy)
    traced = trace(model, example_inputs, find_adapter, strict=strict)
    refused = mirror_unreached(traced)
    if refused:
        raise _unreached_error(refused)
    if traced.mirrored:
        warn(_mirrored_note(traced.mirrored))
    # weight norm alone is cut exactly (structured.weight_norm); any other parametrization
    # computes a tensor that cannot be cut
    masked = [(name, rec.module) for name, rec in traced.modules.items()
              if is_parametrized(rec.module) and not is_weight_normed(rec.module)]
    if masked:
        raise _parametrized_error(masked)
    graph = build_groups(model, traced, ignore, axes_of=_axes_of)
    # members name traced modules and tensors: the trace holds the same objects under the
    # same paths as named_modules() / named_parameters() + named_buffers()
    modules = {name: record.module for name, record in traced.modules.items()}
    params = {name: record.tensor for name, record in traced.params.items()}
    # no grad: a view of a weight a parametrization computes (weight norm) is then a leaf
    # without a graph, whose .grad (None) reads without torch's non-leaf warning
    with torch.no_grad():
        inputs = [(g, _member_views(g, modules, params, model)) for g in graph.groups]
    scores = score_groups(criterion, inputs, aggregation=aggregation,
                          normalization=normalization, seed=seed)
    return graph, scores


def _unreached_error(unreached: list[tuple[str, str]]) -> ConfigError:
    names = ", ".join(name for name, _ in unreached[:4]) + (
        f" and {len(unreached) - 4} more" if len(unreached) > 4 else "")
    return ConfigError(
        f"example_inputs: {names} never ran on the example inputs, while "
        f"{unreached[0][1]} beside it did. The code picks among them by the data "
        f"(mixture-of-experts routing, a head chosen by an input, early exit), so the widths "
        f"they read are unknown and pruning could cut one under them; they would be pruned "
        f"like their siblings if at least two siblings of the same class and shapes ran and "
        f"were coupled alike. Pass example inputs that reach every one of them (for an MoE: "
        f"enough tokens that the router picks every expert; for a head picked by an argument, "
        f"prune a wrapper whose forward calls every head, such as "
        f"[model(x, task) for task in model.heads], and keep its inner model). ignore= does "
        f"not help: the layers they read would still be cut under them")


def _mirrored_note(copied: dict[str, str]) -> str:
    names = ", ".join(list(copied)[:4]) + (
        f" and {len(copied) - 4} more" if len(copied) > 4 else "")
    return (f"{names} never ran on the example inputs; they are pruned like their siblings "
            f"that ran (same class and shapes, coupled alike), such as "
            f"{next(iter(copied.values()))}, and the forward check runs each on such a "
            f"sibling's inputs. To trace them all instead, pass example inputs that reach "
            f"every one (for an MoE: more tokens)")


def _parametrized_error(masked: list[tuple[str, nn.Module]]) -> ConfigError:
    """What to do about layers whose tensors are computed by parametrizations other than a
    lone weight norm: prunekit's sparsity masks are baked in by ``strip``; torch's own
    (spectral_norm, orthogonal, ...) by ``remove_parametrizations``, which keeps the
    tensor's current value."""
    chains = [(name, cast(dict[str, nn.ModuleList], module.parametrizations))
              for name, module in masked]  # a ModuleDict of ParametrizationLists
    found = [f"{name or 'the model'}.{tensor} ({', '.join(type(p).__name__ for p in chain)})"
             for name, tensors in chains[:3] for tensor, chain in tensors.items()]
    name, tensors = chains[0]
    tensor = next(iter(tensors))
    where = f"model.get_submodule({name!r})" if name else "model"
    return ConfigError(
        f"tensors {found} are computed by parametrizations, which structured pruning cannot "
        f"cut (weight_norm alone on a layer's tensors it cuts exactly; not chained with "
        f"another, nor spectral_norm or others). Bake them in first: prunekit's sparsity "
        f"masks (WeightMask) with prunekit.strip(model); torch's (spectral_norm, ...) with "
        f"torch.nn.utils.parametrize.remove_parametrizations({where}, {tensor!r}) for each "
        f"(outputs unchanged), then prune and re-apply them if you train with them"
    )


def _axes_of(module: nn.Module) -> list[tuple[str, int, str]] | None:
    adapter = find_adapter(module)
    return adapter.axes(module) if adapter is not None else None


def _member_views(group: Group, modules: Mapping[str, nn.Module],
                  params: Mapping[str, torch.Tensor], model: nn.Module) -> list[MemberViews]:
    out = []
    for member in group.members:
        if member.kind == "attr":
            views: list[WeightView] = []
        elif member.kind == "module":
            module = modules[member.name] if member.name in modules \
                else model.get_submodule(member.name)
            adapter = find_adapter(module)
            views = adapter.weight_views(module, member.dim) if adapter is not None else []
        else:
            tensor = params[member.name] if member.name in params \
                else model.get_buffer(member.name)
            axis = member.axis if member.axis is not None else 0
            views = [WeightView(rows(tensor, axis), "weight", member.dim,
                                grad_rows(tensor, axis))]
        out.append(MemberViews(member, views))
    return out


@_gc_paused
def prune(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    ratio: float | None = None,
    target: Mapping[str, float] | None = None,
    importance: str | GroupCriterion = "l2",
    ignore: Iterable[nn.Module] = (),
    ratios: Mapping[str | nn.Module, float] | None = None,
    global_ranking: bool | None = None,
    round_to: int | None = None,
    min_keep: float = 0.0,
    max_keep: float = 1.0,
    aggregation: Aggregation = "sum",
    normalization: Normalization | None = None,
    strict: bool = True,
    inplace: bool = False,
    seed: int = 0,
) -> PruneResult:
    """Physically remove channels (filters, neurons, hidden units) from ``model``.

    ``ratio`` is the fraction of *channels* removed from every prunable dependency group
    (0.5 halves each group's width; parameters and MACs usually drop by more — see
    ``result.params_kept`` / ``result.macs_kept``). ``target={"params": 0.5}`` or
    ``{"macs": 0.5}`` instead searches the ratio that *keeps* at most that fraction: 12
    bisection steps over the ratio, the closest result at or under the target wins, and a
    warning says so if it lands more than 0.05 under (widths, ``round_to`` or ``max_keep``
    leave nothing closer) or cannot reach it. The target ranks globally unless
    ``global_ranking=False``, which searches one uniform ratio for every group.
    ``ratios`` sets per-layer ratios (by module or path) for the groups those layers
    produce (uniform allocation only); a block's key (``model.layer1``) sets it for the
    layers inside, a layer's own key winning; ``global_ranking`` ranks units of all groups
    together (scores normalised per group, ``normalization="mean"`` unless given) and
    removes ``ratio`` of all prunable channels, a unit costing its width (an attention head
    ``head_dim`` channels, a grouped-conv group its channels); ``normalization`` only
    matters then (it rescales each group's scores on their own, keeping their order within
    the group), so it is refused without it. Every group keeps at least
    ``max(1, ceil(min_keep · width))`` and at most ``floor(max_keep · width)`` channels;
    ``round_to`` keeps widths at multiples of N.
    ``ignore`` layers keep their output width. ``strict=False`` turns unknown ops into a
    warning and keeps the tensors they touch whole, and keeps whole the groups whose cut
    fails the forward check (see ``result.coverage``).

    The user's model is not modified unless ``inplace=True``; either way the pruned model is
    checked by a forward pass with unchanged output shapes before it is returned. If that
    fails, the groups whose cut breaks it are found by bisection: with ``strict=True`` the
    error names them and the user's model is left as it was; with ``strict=False`` they are
    kept whole and the rest is pruned.

    With ``inplace=True`` the user's module objects are pruned (a reference taken before,
    ``backbone = model.layer1``, sees the pruned layers), except a module the plan replaces
    by another class (``nn.MultiheadAttention`` whose heads were cut). Pruning replaces each
    cut parameter by a new, smaller tensor (also with ``inplace=True``):
    an optimizer built before ``prune`` still holds the old ones, and its state (momentum,
    Adam's moments) has the old shapes, so build the optimizer after pruning.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    example_inputs = copied_inputs(example_inputs)  # (a forward may write into its input)
    if ratio is not None and target is not None:
        raise ConfigError("pass ratio=... or target=..., not both")
    if ratio is None and target is None and not ratios:
        raise ConfigError("pass one of ratio=... (e.g. 0.5), ratios={layer: 0.5} or "
                          "target={'macs': 0.5}")
    if ratios and (global_ranking or target is not None):
        raise ConfigError(
            "ratios={...} sets the widths of uniform allocation; with "
            f"{'global_ranking=True' if global_ranking else 'target=...'} the ranking decides "
            "every group's width, so ratios would be ignored: pass ratio=... with ratios, or "
            "drop ratios")
    if global_ranking is None:  # a target ranks globally unless told not to
        global_ranking = target is not None
    if not isinstance(global_ranking, bool):
        raise ConfigError(f"global_ranking must be True or False, got "
                          f"{type(global_ranking).__name__} {global_ranking!r}")
    if normalization not in (None, "none") and not global_ranking:
        raise ConfigError(
            f"normalization={normalization!r} rescales each group's scores on their own, "
            f"keeping their order, which only matters when groups are ranked together; with "
            f"{'target=... and ' if target is not None else ''}global_ranking=False every "
            f"group removes its own lowest units, so it would change nothing: pass "
            f"global_ranking=True, or drop normalization")
    names = {id(m): n for n, m in model.named_modules()} if ratios else {}
    per_layer = {_module_key(k, names): check_fraction(f"ratios[{k!r}]", v)
                 for k, v in (ratios or {}).items()}
    config = Allocation(ratio=0.0 if ratio is None else ratio, ratios=per_layer,
                        global_ranking=global_ranking, round_to=round_to, min_keep=min_keep,
                        max_keep=max_keep)
    norm = normalization or ("mean" if global_ranking else "none")
    if isinstance(ignore, nn.Module):  # one layer (a Sequential is iterable: its children)
        ignore = [ignore]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(f"seed must be an int (the random criterion's draws), got "
                          f"{type(seed).__name__} {seed!r}")
    ignore = list(ignore)
    graph, scores = _graph_and_scores(model, example_inputs, importance=importance,
                                      ignore=ignore, strict=strict, aggregation=aggregation,
                                      normalization=norm, seed=seed)
    if per_layer:
        per_layer = _within_blocks(per_layer, graph)
        config = replace(config, ratios=per_layer)
        _check_ratio_keys(per_layer, graph)
    reference = graph.trace.output_shapes  # the trace ran the model in eval mode
    # (the search and the checks put back what their forwards write: graph/writes.py)
    # with inplace: (clone, module it copies) of the pruned copy's modules, by clone id
    originals: dict[int, tuple[nn.Module, nn.Module]] = {}
    masks: list[torch.Tensor] | None = None
    while True:
        try:
            if masks is None:
                if target is not None:
                    config = _search(model, example_inputs, graph, scores, config, target)
                masks = allocate(graph.groups, scores, config)
            pruned, plan = _cut_and_check(model, example_inputs, graph, masks, reference,
                                          inplace, originals)
            break
        except (CheckFailed, _TrialFailed) as exc:
            failed, masks = (exc.failed, exc.masks) if isinstance(exc, _TrialFailed) else \
                (exc, masks)
        before = graph
        graph, masks = without_breaking_groups(
            graph, masks, failed, strict=strict,
            check=functools.partial(_cut_and_check, model, example_inputs, before,
                                    reference=reference, inplace=True))
        left = {id(group) for group in graph.groups}
        scores = [score for group, score in zip(before.groups, scores, strict=True)
                  if id(group) in left]
        if target is not None:
            masks = None  # searched again over the groups left: met by what can be cut
    changed = _numbers_changed(graph, masks) + changed_attribute_numbers(
        model, pruned, graph.trace.classes)
    if changed:
        warn(
            f"the pruned model computes a number from a width that this prune changed, at "
            f"{', '.join(changed[:3])} (an attention scale 1/sqrt(head width) read from a "
            f"shape or from an int attribute that this prune rewrote, such as self.d_k, or "
            f"scaled_dot_product_attention's default scale): it now differs from "
            f"the unpruned model's, so outputs change beyond the removed channels; "
            f"fine-tune after pruning, or write that number as a constant to keep it")
    unreached = _unreached_layers(model, pruned, graph, ignore)
    if unreached:
        warn(unreached)
    compiled = [] if inplace else [name or "model" for name, module in model.named_modules()
                                   if module.__dict__.get("_compiled_call_impl") is not None]
    if compiled:
        warn(f"{', '.join(compiled[:3])} ran module.compile(), whose compiled forward stays "
             f"bound to the unpruned module: result.model runs eagerly; call .compile() on "
             f"the same modules of result.model (with your options) to compile it again")
    if not (plan["modules"] or plan["params"]) and (config.ratio > 0 or per_layer or target):
        why = _why_nothing(graph.groups)
        warn(f"prune removed nothing: {why}; result.coverage lists the parameters "
             f"that no group covers and why")
    if plan["modules"] or plan["params"] or plan["attrs"]:  # (pk.save stores them all)
        record_plans(pruned, [*plans_of(model), plan])
    original = _shallow_clone(model)  # (before an in-place prune changes its modules)
    if inplace:
        _transplant(originals)
        pruned = model
    written = graph.trace.written
    return PruneResult(pruned, plan, _lazy_profile(original, example_inputs, written),
                       _lazy_profile(pruned, example_inputs, written),
                       functools.partial(coverage_report, original, graph), len(graph.groups))


def _unreached_layers(model: nn.Module, pruned: nn.Module, graph: DependencyGraph,
                      ignore: list[nn.Module]) -> str | None:
    """A note on the layers that never ran on the example inputs (an optional input left
    None, a branch the example did not take) and have a dim as wide as a width this prune
    cut: they keep their widths, so the pruned model fails if it calls them on the cut
    channels. None if there are none (or nothing was cut)."""
    now = dict(pruned.named_parameters())
    cut: set[int] = set()
    for name, param in model.named_parameters():
        after = now.get(name)
        if after is not None and after.shape != param.shape:
            cut.update(a for a, b in zip(param.shape, after.shape, strict=True) if b < a)
    if not cut:
        return None
    trace, members = graph.trace, {m.name for m in graph.members}
    skipped = {id(m) for root in ignore for m in root.modules()}
    read = {id(record.tensor) for record in trace.params.values()}
    by_name = dict(model.named_modules(remove_duplicate=False))
    for name in trace.modules:  # a layer's children ran with it (nn.MultiheadAttention's
        layer = by_name.get(name)  # out_proj), and its tensors (a tied embedding)
        if layer is not None:
            skipped.update(id(m) for m in layer.modules())
            read.update(id(p) for p in layer.parameters())
    found: list[str] = []
    for name, module in model.named_modules():
        own = [(f"{name}.{k}" if name else k, p) for k, p in module._parameters.items()
               if p is not None]
        if not own or id(module) in skipped or name in members:
            continue
        unread = [(key, p) for key, p in own if not (
            id(p) in read or key in members or (key in now and now[key].shape != p.shape))]
        whole = len(unread) == len(own)  # (else a layer that ran, with tensors it never read)
        for key, p in [(name, None)] if whole else unread:
            tensors = own if p is None else [(key, p)]
            widths = sorted({size for _, t in tensors for size in t.shape if size in cut})
            if widths:
                kind = type(module).__name__ if p is None else "a parameter it never read"
                found.append(f"{key or 'the model itself'} ({kind}, width {widths[0]})")
    if not found:
        return None
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    keep = "keeps its widths, which match" if len(found) == 1 else \
        "keep their widths, which match"
    return (f"{', '.join(found[:3])}{more} never ran on the example inputs and {keep} "
            f"a width this prune cut: if the model calls them on the cut "
            f"channels (an optional input left None, a branch the example did not take, "
            f"LoRA factors read only before a merge), the pruned model fails there. Pass "
            f"example inputs that reach them, or add the layers whose channels they read to "
            f"ignore=")


def _within_blocks(per_layer: Mapping[str, float], graph: DependencyGraph) -> dict[str, float]:
    """``ratios`` with a key that names a block (``model.layer1``, as Torch-Pruning's
    ``pruning_ratio_dict`` is written) replaced by the layers inside it that make a prunable
    group, each at that ratio; a layer's own key wins over its block's, an inner block's
    over an outer one's."""
    makers = {m.name for g in graph.groups for m in g.members if m.root and m.kind == "module"}
    out: dict[str, float] = {}
    for key in sorted(per_layer, key=len):  # outer blocks first: inner keys overwrite them
        inside = [name for name in makers if name.startswith(f"{key}.")] \
            if key not in makers else []
        if inside:
            out.update(dict.fromkeys(inside, per_layer[key]))
        else:
            out[key] = per_layer[key]
    return out


def _check_ratio_keys(per_layer: Mapping[str, float], graph: DependencyGraph) -> None:
    """A ``ratios`` key must name a layer that makes a prunable group's channels: a layer
    that only carries or reads them (a BatchNorm, the next conv) is an error naming the
    layer that makes them; a layer that makes none (an output layer, one kept whole) a
    warning. Before, both were ignored, and prune removed nothing without saying why."""
    makers = {m.name for g in graph.groups for m in g.members if m.root}
    for key in per_layer:
        if key in makers:
            continue
        record = graph.trace.modules.get(key)
        makes = record is not None and any(d.root for d in record.dims.values())
        owners = sorted({m.name for g in graph.groups if any(x.name == key for x in g.members)
                         for m in g.members if m.root and m.kind == "module"})
        if owners and not makes:  # a BatchNorm, the next conv: name the maker
            raise ConfigError(f"ratios[{key!r}]: {key!r} makes no prunable group; the "
                              f"channels it reads or carries are made by "
                              f"{', '.join(map(repr, owners[:3]))}: key ratios by that layer "
                              f"to prune them")
        # a layer whose own channels are kept whole (an output layer): a warning
        warn(f"ratios[{key!r}]: {key!r} makes no prunable group (an output layer, a "
             f"layer in ignore=, or one kept whole: result.coverage says why), so "
             f"its ratio removes nothing")


def _numbers_changed(graph: DependencyGraph, masks: list[torch.Tensor]) -> list[str]:
    """Where the code computes a number from a width (``Trace.width_numbers``) that the
    masks cut."""
    notes = graph.trace.width_numbers
    if not notes:
        return []
    removed = [group.units[~mask] for group, mask in zip(graph.groups, masks, strict=True)
               if not bool(mask.all())]
    if not removed:
        return []
    gone, space = torch.cat(removed), graph.trace.space
    changed = [where for where, labels in notes
               if bool(torch.isin(space.find(labels), gone).any())]
    return list(dict.fromkeys(changed))  # (one place, however many calls ran it)


def _why_nothing(groups: tuple[Group, ...]) -> str:
    """Why a prune with a ratio removed nothing, for its warning."""
    if not groups:
        return "no dependency group is prunable"
    single = [group for group in groups if group.size == 1]
    why = (f"each of the {len(groups)} prunable dependency groups keeps every channel "
           f"(ratio, min_keep or round_to too coarse for their widths)")
    if single:
        names = "; ".join(group.describe() for group in single[:3])
        why += (f"; {len(single)} of them are a single unit (a width of one, or channels "
                f"the code ties together, such as a table of positions added across them): "
                f"{names}")
    return why


def _cut_and_check(model: nn.Module, example_inputs: ExampleInputs, graph: DependencyGraph,
                   masks: list[torch.Tensor], reference: list[tuple[str, tuple[int, ...]]],
                   inplace: bool,
                   originals: dict[int, tuple[nn.Module, nn.Module]] | None = None
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """The plan for ``masks`` applied to a copy of ``model``, checked by a forward pass with
    unchanged output shapes; CheckFailed if that fails (``model`` is never touched). With
    ``inplace``, ``originals`` receives the copy's modules (see :func:`_shallow_clone`)."""
    plan, indices = plan_with_indices(model, graph, masks)
    # surgery replaces tensors instead of writing into them, so with inplace=True a clone
    # that shares them is enough to leave the user's model untouched on failure
    clones: list[nn.Module] = []
    if originals is not None:
        originals.clear()
    pruned = _shallow_clone(model, clones, originals) if inplace else copy_model(model)
    try:
        apply_plan(pruned, plan, indices=indices)
    except ConfigError:
        raise
    except Exception as exc:
        raise CheckFailed.raised(exc) from exc
    # without a module swapped in, the clones are pruned.modules(): no second walk
    swapped = any("swap" in entry for entry in plan["modules"].values())
    with restored(pruned, graph.trace.written):  # it starts as the user's model was
        _check_shapes(pruned, example_inputs, reference,
                      clones if clones and not swapped else None,
                      replay=graph.trace.replay, mirrored=graph.trace.mirrored)
        if graph.trace.train_output_shapes is not None:  # layers only training runs ran
            _check_shapes(pruned, example_inputs, graph.trace.train_output_shapes,
                          training=True, replay=graph.trace.train_replay)
    return pruned, plan


def _lazy_profile(model: nn.Module, example_inputs: ExampleInputs,
                  written: tuple[str, ...] = ()) -> Callable[[], Profile]:
    def measure() -> Profile:
        # BatchNorm in train mode would update its statistics; what the forward writes
        # into (graph/writes.py) is put back, and so are the attributes and hooks it adds
        # (the unpruned model's clone shares the user's modules' hook dicts)
        with eval_mode(model), restored(model, written), recomputed_caches(model.modules()):
            return profile(model, example_inputs)
    return measure


# attribute types that _shallow_clone shares as they are (exact types, none a dict, list,
# set, tuple or Module): skips its isinstance chain for most attributes of a module
_SHARED = frozenset({bool, int, float, str, type(None), torch.Tensor, nn.Parameter,
                     torch.dtype, torch.device})


# nn.Module's hook registries: a RemovableHandle holds a weak reference to the dict itself
_HOOK_DICTS = frozenset({
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
    "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
})


def _shallow_clone(model: nn.Module, clones: list[nn.Module] | None = None,
                   originals: dict[int, tuple[nn.Module, nn.Module]] | None = None
                   ) -> nn.Module:
    """The module tree copied, every tensor shared: new module objects whose attribute dicts
    and containers are copied one level, modules in them cloned (once each, so shared
    submodules stay shared). Much cheaper than ``copy.deepcopy``; safe wherever tensors are
    replaced rather than written into, as surgery does. A tuple without modules in it is
    shared (it cannot change); a method bound to a module is bound to its clone. The hook
    dicts are shared, so that a handle the user holds still removes its hook from the module
    that an in-place prune leaves (surgery never adds or removes hooks). ``clones`` receives
    every new module, ``originals`` maps each one's id to (it, the module it copies)."""
    memo: dict[int, nn.Module] = {}
    module_type = nn.Module

    def clone(module: nn.Module) -> nn.Module:
        done = memo.get(id(module))
        if done is not None:
            return done
        new = object.__new__(type(module))
        memo[id(module)] = new
        if originals is not None:
            originals[id(new)] = (new, module)
        state = module.__dict__.copy()
        # module.compile()'s compiled call is bound to the module it compiled: the clone would
        # run that one, at the old widths (a check of the cut would pass whatever it cut)
        state.pop("_compiled_call_impl", None)
        for key, value in state.items():
            kind = type(value)
            if kind in _SHARED or key in _HOOK_DICTS:  # none of these is copied below
                continue
            if kind is OrderedDict or kind is dict or isinstance(value, dict):
                # a subclass may hold attributes of its own, which .copy() drops (diffusers'
                # FrozenDict config: config.center_input_sample); copy.copy keeps them
                out = value.copy() if kind is OrderedDict or kind is dict else copy.copy(value)
                if value:  # most of a module's hook dicts are empty
                    for name, item in value.items():
                        if isinstance(item, module_type):
                            out[name] = clone(item)
                state[key] = out
            elif isinstance(value, module_type):
                state[key] = clone(value)
            elif kind is types.MethodType and isinstance(value.__self__, module_type):
                # a method bound to a module (``self.forward = self.forward_fast``) runs
                # the clone, not the module it was copied from
                state[key] = types.MethodType(value.__func__, clone(value.__self__))
            elif isinstance(value, (list, set)) or (
                    kind is tuple and not _SHARED.issuperset(map(type, value))
                    and any(isinstance(v, module_type) for v in value)):
                state[key] = kind([clone(v) if isinstance(v, module_type) else v
                                   for v in value])
        new.__dict__.update(state)
        return new

    root = clone(model)
    if clones is not None:
        clones.extend(memo.values())
    return root


def _transplant(originals: Mapping[int, tuple[nn.Module, nn.Module]]) -> None:
    """Give each module its pruned clone's state (``originals``: clone id -> (clone, module)),
    every reference to a clone in it put back to the module it copies (in the containers
    ``_shallow_clone`` copied, which the clones own): an in-place prune keeps the user's
    module objects, so a reference taken before (``backbone = model.layer1``, an EMA or
    teacher wrapper's) sees the pruned layers. A module the plan swapped in (a
    PrunedMultiheadAttention) is no clone: the parent holds it as it is."""
    def back(value: Any) -> Any:
        if isinstance(value, nn.Module):
            pair = originals.get(id(value))
            return value if pair is None else pair[1]
        if type(value) is types.MethodType and isinstance(value.__self__, nn.Module):
            return types.MethodType(value.__func__, back(value.__self__))
        return value

    for new, old in originals.values():
        state = new.__dict__
        for key, value in state.items():
            if key in _HOOK_DICTS or type(value) in _SHARED:
                continue
            if isinstance(value, dict):
                for name, item in value.items():
                    if isinstance(item, nn.Module):
                        value[name] = back(item)
            elif isinstance(value, (list, set)) or type(value) is tuple:
                state[key] = type(value)(back(v) for v in value)
            else:
                state[key] = back(value)
        compiled = old.__dict__.get("_compiled_call_impl")  # (module.compile(): bound to
        old.__dict__.clear()                                 # old, it runs the pruned state)
        old.__dict__.update(state)
        if compiled is not None:
            old.__dict__["_compiled_call_impl"] = compiled


def _module_key(key: str | nn.Module, names: Mapping[int, str]) -> str:
    if isinstance(key, str):
        if key not in names.values():
            raise ConfigError(f"ratios names module {key!r}, which the model does not have")
        return key
    if isinstance(key, nn.Module) and id(key) in names:
        return names[id(key)]
    raise ConfigError(f"ratios keys must be submodules of the model or their paths, got {key!r}")


def _check_shapes(model: nn.Module, example_inputs: ExampleInputs,
                  reference: list[tuple[str, tuple[int, ...]]],
                  modules: list[nn.Module] | None = None, *, training: bool = False,
                  replay: Recording | None = None,
                  mirrored: Mapping[str, str] | None = None) -> None:
    """The forward check: ``model`` runs and gives the ``reference`` output shapes, else
    CheckFailed saying how it failed. ``replay``: what the trace's data-dependent calls
    gave (a box count, a branch), put back so that only the surgery can change a shape.
    ``mirrored`` (module -> sibling, ``Trace.mirrored``): each such module, which the
    example never reaches, then runs on its sibling's first inputs and must give outputs
    of the same shapes."""
    mode = " in training mode" if training else ""
    calls: dict[str, tuple[Any, ...]] = {}
    try:
        with _first_calls(model, set((mirrored or {}).values()), calls):
            def run() -> list[tuple[str, tuple[int, ...]]]:
                return _output_shapes(model, example_inputs, modules, training=training)
            shapes = replayed(replay, model, run) if replay else run()
    except ConfigError:
        raise
    except Exception as exc:
        raise CheckFailed.raised(exc, mode) from exc
    if shapes != reference:
        raise CheckFailed(f"pruning changed the model's output shapes{mode} from {reference} "
                          f"to {shapes}", None)
    for path, sibling in (mirrored or {}).items():
        if sibling not in calls:  # (the replayed routing reaches what the trace saw)
            continue
        args, kwargs, out = calls[sibling]
        module = model.get_submodule(path)
        try:
            with torch.no_grad(), eval_mode(module), recomputed_caches(list(module.modules())):
                got = module(*args, **kwargs)
        except Exception as exc:
            raise CheckFailed(f"the pruned model failed its forward check: {path}, pruned "
                              f"like {sibling} (the example never reaches it), fails on "
                              f"{sibling}'s inputs ({type(exc).__name__}: {exc})", exc) from exc
        want = [(p, tuple(t.shape)) for p, t in walk_tensors(out)]
        if [(p, tuple(t.shape)) for p, t in walk_tensors(got)] != want:
            raise CheckFailed(f"the pruned model failed its forward check: {path}, pruned "
                              f"like {sibling} (the example never reaches it), gives outputs "
                              f"of other shapes than {sibling} on its inputs", None)


@contextlib.contextmanager
def _first_calls(model: nn.Module, paths: set[str],
                 calls: dict[str, tuple[Any, ...]]) -> Iterator[None]:
    """Fill ``calls[path]`` with (args, kwargs, output) of the first call of each module in
    ``paths`` while the block runs."""
    if not paths:
        yield
        return

    def keep(path: str, module: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        calls.setdefault(path, (args, kwargs, out))

    handles = [model.get_submodule(path).register_forward_hook(
        functools.partial(keep, path), with_kwargs=True) for path in sorted(paths)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _output_shapes(model: nn.Module, example_inputs: ExampleInputs,
                   modules: list[nn.Module] | None = None, *, training: bool = False
                   ) -> list[tuple[str, tuple[int, ...]]]:
    """Output paths and shapes of a no-grad forward in eval mode, or in training mode with
    every buffer restored after it (``modules``: the model's modules, when the caller has
    them). What the forward leaves in plain attributes (a cache that was None) is undone,
    so the pruned model starts as the user's model was."""
    every = modules if modules is not None else list(model.modules())
    with grad_mode(example_inputs, every), model_mode(model, training, every), \
            eager_compiled(), recomputed_caches(every), \
            preserved_buffers(model) if training else contextlib.nullcontext():
        out = run_model(model, example_inputs)
    return [(path, tuple(t.shape)) for path, t in walk_tensors(out)]


def _search(model: nn.Module, example_inputs: ExampleInputs, graph: DependencyGraph,
            scores: list[torch.Tensor],
            config: Allocation, target: Mapping[str, float]) -> Allocation:
    """Bisection on the global ratio until the kept fraction of params/MACs meets ``target``."""
    if not isinstance(target, Mapping) or len(target) != 1:
        raise ConfigError(
            f"target must be one entry, {{'params': f}} or {{'macs': f}}, got {target!r}")
    (metric, goal), = target.items()
    check_choice("target metric", metric, ("params", "macs"))
    goal = check_fraction(f"target[{metric!r}]", goal, allow_one=True, meaning="keeps")
    written = graph.trace.written  # (what a forward writes into is put back after each)
    with restored(model, written):
        base = _measure(model, example_inputs, metric)
    low, high = 0.0, 0.99
    best: Allocation | None = None
    best_kept = last_kept = 1.0
    widths = [unit_width(g) for g in graph.groups]  # the same groups in every trial
    for _ in range(12):
        mid = (low + high) / 2
        trial = replace(config, ratio=mid)
        masks = _allocate(graph.groups, scores, trial, widths)
        plan, indices = plan_with_indices(model, graph, masks)
        candidate = _shallow_clone(model)
        try:
            apply_plan(candidate, plan, indices=indices)
            with restored(candidate, written):
                kept = last_kept = _measure(candidate, example_inputs, metric) / max(1, base)
        except ConfigError:
            raise
        except Exception as exc:  # its MACs count runs the model: a cut that breaks it
            raise _TrialFailed(masks, CheckFailed.raised(exc)) from exc
        if kept <= goal:
            best, best_kept, high = trial, kept, mid
        else:
            low = mid
    if best is None:  # unreachable goal (everything left is fixed): prune as far as it went
        warn(f"target {metric}={goal} is out of reach: pruning as far as the search "
             f"went keeps {last_kept:.3f} of the {metric} (the rest is kept whole, "
             f"or held by min_keep / round_to: result.coverage says what and why)")
        return replace(config, ratio=high)
    if goal - best_kept > 0.05:
        warn(f"target {metric}={goal}: the closest allocation at or under it keeps "
             f"{best_kept:.3f} (max_keep, round_to or the groups' widths leave "
             f"nothing closer)")
    return best


class _TrialFailed(Exception):
    """A trial of the target search broke the model (``failed``), cutting ``masks``."""

    def __init__(self, masks: list[torch.Tensor], failed: CheckFailed) -> None:
        super().__init__(failed.message)
        self.masks, self.failed = masks, failed


def _measure(model: nn.Module, example_inputs: ExampleInputs, metric: str) -> int:
    if metric == "params":
        return sum(p.numel() for p in model.parameters())
    with eval_mode(model):
        return profile(model, example_inputs).macs

