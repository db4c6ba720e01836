"""``sparsify``: fine-grained (unstructured, kernel, block, N:M) pruning with lasting masks.

Flow: validate every argument → pick the weight tensors → score them with a criterion →
reduce to units with a pattern → choose the units to remove (by sparsity, per layer or in
one global ranking, or by a threshold τ; N:M chooses inside each group) → AND with any
existing mask → apply all masks. Nothing touches the model before every mask is computed,
and a failure while applying rolls the masks back, so an error leaves the model as it was.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn

from prunekit.errors import ConfigError, NonFiniteWeightsError, check_choice, check_fraction
from prunekit.importance import get_criterion
from prunekit.importance.base import Criterion, prepare_scorers
from prunekit.importance.data import CalibrationData, LossFn
from prunekit.sparse.masks import apply_mask, get_mask, remove_mask
from prunekit.sparse.patterns import Pattern, PatternOptions, check_block_shape, get_pattern
from prunekit.sparse.ranking import prune_count, smallest_k
from prunekit.sparse.selection import (
    DEFAULT_LAYERS,
    Target,
    check_layers,
    resolve_ignore,
    resolve_overrides,
    select_targets,
)

Scope = Literal["global", "layer"]
SCOPES: tuple[str, ...] = get_args(Scope)


@dataclass(frozen=True)
class SparsifyConfig:
    """The validated options of one ``sparsify`` call (ignore entries as module names)."""

    sparsity: float | None
    threshold: float | None
    criterion: str
    pattern: str
    scope: str
    overrides: Mapping[str, float] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    block_shape: tuple[int, int] = (1, 4)
    seed: int = 0


@dataclass(frozen=True)
class SparsifyResult:
    """What ``sparsify`` achieved; counts include entries pruned by earlier masks."""

    #: full tensor name (e.g. "fc1.weight") → fraction of its entries masked out
    tensor_sparsity: Mapping[str, float]
    #: masked-out fraction over all selected tensors
    global_sparsity: float
    #: entries masked out over all selected tensors
    num_pruned: int
    #: entries in all selected tensors
    num_weights: int
    config: SparsifyConfig


@dataclass
class _Scored:
    """One target's unit scores (-inf where a unit is already fully pruned) and old mask."""

    target: Target
    units: torch.Tensor
    old_keep: torch.Tensor | None


def _check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(
            f"threshold must be a non-negative float, got {type(threshold).__name__} "
            f"{threshold!r}"
        )
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ConfigError(
            f"threshold={threshold!r} is out of range; scores are non-negative, so it must be "
            f"a finite value >= 0 (e.g. threshold=0.1 prunes |w| <= 0.1 with criterion='l1')"
        )
    return float(threshold)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    return seed


def _check_amount(
    sparsity: object, threshold: object, pattern: Pattern, overrides: Mapping[str, float]
) -> tuple[float | None, float | None]:
    """Exactly one of sparsity / threshold, unless the pattern fixes the sparsity itself."""
    fixed = pattern.fixed_sparsity
    if sparsity is not None and threshold is not None:
        raise ConfigError(
            f"got both sparsity={sparsity!r} and threshold={threshold!r}; pass exactly one "
            f"(sparsity=0.9 removes 90 %, threshold=0.1 removes scores <= 0.1)"
        )
    if fixed is None:
        if sparsity is None and threshold is None:
            raise ConfigError(
                "neither sparsity nor threshold was given; pass exactly one, e.g. "
                "sparsify(model, sparsity=0.9) or sparsify(model, threshold=0.1)"
            )
        return (
            None if sparsity is None else check_fraction("sparsity", sparsity),
            None if threshold is None else _check_threshold(threshold),
        )
    if threshold is not None:
        raise ConfigError(
            f"threshold={threshold!r} does not apply to pattern={pattern.name!r}, which keeps "
            f"a fixed share of every group (sparsity {fixed:g}); drop threshold"
        )
    requested = {"sparsity": sparsity} if sparsity is not None else {}
    requested.update({f"overrides[{k!r}]": v for k, v in overrides.items()})
    for name, value in requested.items():
        if not math.isclose(check_fraction(name, value), fixed):
            raise ConfigError(
                f"{name}={value!r} conflicts with pattern={pattern.name!r}, whose sparsity is "
                f"fixed at {fixed:g}; drop {name} (or pass {fixed:g}) or choose another N:M"
            )
    return fixed, None


def _score(
    target: Target, criterion: Criterion, pattern: Pattern, generator: torch.Generator
) -> _Scored:
    weight = target.weight()
    # one reduction suffices: a NaN/inf anywhere makes the sum non-finite
    bad = 0 if bool(weight.detach().sum().isfinite()) else int((~weight.isfinite()).sum())
    if bad:
        raise NonFiniteWeightsError(
            f"{target.name} holds {bad} NaN/inf value(s) of {weight.numel()}, so its weights "
            f"cannot be ranked; load a finite checkpoint or add {target.module_name!r} to ignore"
        )
    pattern.validate(target.name, weight.shape)
    units = pattern.unit_scores(criterion.score(weight, generator=generator), criterion)
    old_keep = get_mask(target.module, target.tensor)
    if old_keep is not None:
        alive = pattern.unit_alive(old_keep.to(units.device))
        units = units.masked_fill(~alive, -math.inf)
    return _Scored(target, units, old_keep)


def _keep_units(
    scored: list[_Scored],
    pattern: Pattern,
    sparsity: float | None,
    threshold: float | None,
    scope: str,
    overrides: Mapping[str, float],
) -> list[torch.Tensor]:
    """Unit keep-masks, one per scored target, in order."""
    keep: list[torch.Tensor | None] = [None] * len(scored)
    ranked_together: list[int] = []
    for i, item in enumerate(scored):
        chosen = pattern.select(item.units)
        layer_sparsity = overrides.get(item.target.module_name)
        if chosen is not None:
            keep[i] = chosen
        elif layer_sparsity is not None:
            keep[i] = ~smallest_k(item.units, prune_count(layer_sparsity, item.units.numel()))
        elif threshold is not None:
            keep[i] = item.units > threshold
        elif scope == "layer" and sparsity is not None:
            keep[i] = ~smallest_k(item.units, prune_count(sparsity, item.units.numel()))
        else:
            ranked_together.append(i)
    if ranked_together and sparsity is not None:
        device = scored[ranked_together[0]].units.device
        flat = [scored[i].units.reshape(-1).to(device) for i in ranked_together]
        everything = torch.cat(flat)
        pruned = smallest_k(everything, prune_count(sparsity, everything.numel()))
        for i, part in zip(
            ranked_together, pruned.split([f.numel() for f in flat]), strict=True
        ):
            units = scored[i].units
            keep[i] = (~part).reshape(units.shape).to(units.device)
    missing = [scored[i].target.name for i, k in enumerate(keep) if k is None]
    if missing:  # unreachable after _check_amount; a guard against a future pattern type
        raise ConfigError(f"no sparsity or threshold decides what to prune in {missing}")
    return [k for k in keep if k is not None]


def _apply_all(masks: list[tuple[Target, torch.Tensor]]) -> None:
    """Apply every mask; on any failure restore the masks (or their absence) from before,
    and the order of each module's parameters, so ``state_dict`` reads exactly as before."""
    before = [
        (t, None if (m := get_mask(t.module, t.tensor)) is None else m.clone(),
         list(t.module._parameters))
        for t, _ in masks
    ]
    try:
        for target, mask in masks:
            apply_mask(target.module, target.tensor, mask)
    except BaseException:
        for target, old, order in before:
            if old is None:
                remove_mask(target.module, target.tensor, bake=False)
                _reorder(target.module._parameters, order)
            else:
                apply_mask(target.module, target.tensor, old)
        raise


def _reorder(params: dict[str, nn.Parameter | None], order: list[str]) -> None:
    """Put ``params`` back in ``order`` (removing a parametrization re-adds at the end)."""
    items = dict(params)
    params.clear()
    params.update({k: items[k] for k in order if k in items})
    params.update({k: v for k, v in items.items() if k not in params})


def sparsify(
    model: nn.Module,
    sparsity: float | None = None,
    *,
    threshold: float | None = None,
    criterion: str | Criterion = "l1",
    pattern: str | Pattern = "unstructured",
    scope: Scope = "global",
    overrides: Mapping[str, float] | None = None,
    ignore: Iterable[nn.Module | str] = (),
    layers: Iterable[type[nn.Module]] = DEFAULT_LAYERS,
    block_shape: tuple[int, int] = (1, 4),
    seed: int = 0,
    data: CalibrationData | Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    calib_batches: int | None = None,
) -> SparsifyResult:
    """Mask the weights of ``model`` in place and report the sparsity reached.

    Args:
        sparsity: fraction in [0, 1) of units to remove: exactly ``round(sparsity * n)`` of
            the ``n`` units (weights, kernels or blocks) per tensor (``scope="layer"``) or
            over all selected tensors (``scope="global"``, one ranking). Ties at the cut are
            broken as ``torch.topk`` breaks them, so L1 masks equal those of
            ``torch.nn.utils.prune`` (``global_unstructured`` / ``l1_unstructured``).
        threshold: instead of ``sparsity``, remove every unit whose score is <= τ
            (``criterion="l1"``: |w| <= τ; ``"normalized"``: |w| / Σ|w| <= τ); a threshold
            is the same for every tensor, so ``scope`` does not change its result.
        criterion: a registered criterion name or object: data-free "l1", "l2", "random",
            "normalized", "lamp"; data-aware "grad", "taylor", "wlg", "snip", "fisher",
            "activation" (these need ``data``).
        pattern: "unstructured", "kernel", "block" (of ``block_shape``) or "N:M" such as
            "2:4". N:M keeps N of every M weights: its sparsity is 1 - N/M, ``scope`` does
            not apply, and ``sparsity`` may be omitted (any other value is an error).
        scope: "global" (one ranking across tensors) or "layer" (each tensor on its own).
        overrides: module name → sparsity for that layer; those tensors leave the global
            ranking (and ignore ``threshold``).
        ignore: modules (objects or names) whose subtree is left untouched.
        layers: module types whose ``weight`` is pruned; biases and norms never are.
        block_shape: (rows, cols) of a block over the 2-D view ``(out, in * prod(kernel))``.
        seed: seeds the generator of ``criterion="random"``.
        data: calibration batches for a data-aware criterion: a loader (any iterable of
            batches) or a :class:`~prunekit.importance.data.CalibrationData`. Statistics are
            gathered before anything is masked; weights, ``.grad``, ``requires_grad``,
            buffers and train/eval modes are left as they were.
        loss_fn: ``loss_fn(model, batch) -> scalar`` for gradient criteria (default:
            cross-entropy on ``(inputs, targets)``); sum the heads' losses for multi-task.
        calib_batches: how many batches of ``data`` to use (default: all).

    Entries already masked stay masked (scored lowest, masks ANDed) and count towards the
    sparsity, so repeated calls prune iteratively: ``sparsity`` is the fraction of all
    entries, not of those still alive (``torch.nn.utils.prune`` takes the latter).

    Raises:
        ConfigError: an option out of range or unknown (the message lists the valid ones),
            an ignore/overrides name not in the model, a pattern that cannot tile a weight.
        NothingToPruneError: no weight is selected.
        NonFiniteWeightsError: a selected weight holds NaN/inf (the message names it).
        TypeError: an argument of the wrong type.
    On any error the model is left exactly as it was.
    """
    crit = get_criterion(criterion)
    check_choice("scope", scope, SCOPES)
    shape = check_block_shape(block_shape)
    pat = get_pattern(pattern, PatternOptions(block_shape=shape))
    seed = _check_seed(seed)
    layer_types = check_layers(layers)
    ignored = resolve_ignore(model, ignore)
    targets = select_targets(model, layer_types, ignored)
    by_layer = resolve_overrides(overrides, targets)
    amount, tau = _check_amount(sparsity, threshold, pat, by_layer)
    scorer = prepare_scorers(crit, model, {t.name: t.raw() for t in targets}, data,
                             caller="sparsify", loss_fn=loss_fn, batches=calib_batches)

    generator = torch.Generator().manual_seed(seed)
    scored = [_score(t, scorer(t.name), pat, generator) for t in targets]
    unit_keep = _keep_units(scored, pat, amount, tau, scope, by_layer)
    masks: list[tuple[Target, torch.Tensor]] = []
    for item, keep in zip(scored, unit_keep, strict=True):
        weight_shape = item.target.weight().shape
        mask = pat.expand(keep, weight_shape)
        if item.old_keep is not None:
            mask = mask & item.old_keep.to(mask.device)
        masks.append((item.target, mask))
    _apply_all(masks)

    kept = {t.name: int(torch.count_nonzero(m)) for t, m in masks}
    per_tensor = {t.name: (m.numel() - kept[t.name]) / m.numel() for t, m in masks}
    total = sum(m.numel() for _, m in masks)
    pruned = total - sum(kept.values())
    config = SparsifyConfig(
        sparsity=amount,
        threshold=tau,
        criterion=crit.name,
        pattern=pat.name,
        scope=scope,
        overrides=dict(by_layer),
        ignore=ignored,
        layers=tuple(t.__name__ for t in layer_types),
        block_shape=shape,
        seed=seed,
    )
    return SparsifyResult(
        tensor_sparsity=per_tensor,
        global_sparsity=pruned / total,
        num_pruned=pruned,
        num_weights=total,
        config=config,
    )
