"""How many units each dependency group loses: uniform, per-layer or global ranking.

``ratio`` is the fraction of a group's *channels* (units) removed — ``ratio=0.5`` halves
the width of every prunable group; the resulting fraction of parameters and MACs differs
(a conv between two halved groups keeps about a quarter of its weights), and
``prune`` reports it. With ``global_ranking`` the same total number of channels is removed
wherever the (normalised) scores are lowest, so some groups lose more than others; a unit of
several channels (an attention head) costs that many (:func:`unit_width`).
Every group keeps at least ``max(1, ceil(min_keep · units))`` units and at most
``max(1, floor(max_keep · units))`` (so global ranking prunes every group a little), and
``round_to`` keeps widths at multiples of N (rounded up, never above the original width), as
does a group's own ``step`` (expert weights keep 16-byte strides for grouped products).
A group that spans a concat keeps a channel of every layer in it (a layer with none cannot
run), as does one split into parts that each follow pruning (every part's layer and size
attribute keeps one), within that count: the count is raised only where it is below the
number of such layers. With uniform allocation, a group whose parts are sized by different
int attributes (a split into query/key channels counted by ``key_dim`` and value channels
counted by ``val_dim``) shares its count among those parts in proportion to their sizes,
the best scores within each: ``ratio=0.5`` halves each attribute, where scores summed over
unlike layers would rank one part out (EfficientViT-M's ``key_dim`` went 16 → 1).
Widths are counted in channels: where a unit spans several channels of a layer (an
attention head of ``head_dim`` rows, a ResNeXt group), the unit count is rounded so that
every producing layer's width is a multiple of N — 8-row heads need no rounding for
``round_to=8``, 4-channel groups keep an even count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from prunekit._warn import warn
from prunekit.errors import ConfigError, check_fraction
from prunekit.graph.dependency import Group
from prunekit.graph.labels import in_sorted, positions_in, search_sorted

__all__ = ["Allocation", "allocate", "unit_width"]


@dataclass(frozen=True)
class Allocation:
    """Allocation options shared by the API, the CLI and recipes.

    ``ratios`` maps a module path to the ratio of the groups whose producing layer it is
    (it overrides ``ratio`` there).
    """

    ratio: float = 0.0
    ratios: Mapping[str, float] = field(default_factory=dict)
    global_ranking: bool = False
    round_to: int | None = None
    min_keep: float = 0.0
    max_keep: float = 1.0

    def __post_init__(self) -> None:
        check_fraction("ratio", self.ratio)
        for name, value in self.ratios.items():
            check_fraction(f"ratios[{name!r}]", value)
        check_fraction("min_keep", self.min_keep, allow_one=True, meaning="keeps")
        check_fraction("max_keep", self.max_keep, allow_one=True, meaning="keeps")
        if self.max_keep < self.min_keep:
            raise ConfigError(f"max_keep={self.max_keep} is below min_keep={self.min_keep}; "
                              f"a group cannot keep at most less than it keeps at least")
        if self.round_to is not None and (
            isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
            or self.round_to < 1
        ):
            raise ConfigError(
                f"round_to={self.round_to!r} must be a positive int (e.g. 8) or None"
            )


def _group_ratio(group: Group, config: Allocation) -> float:
    found = [config.ratios[m.name] for m in group.members if m.root and m.name in config.ratios]
    return max(found) if found else config.ratio


def _floor_keep(group: Group, config: Allocation) -> int:
    return min(group.size, max(1, math.ceil(config.min_keep * group.size)))


def _ceiling_keep(group: Group, config: Allocation) -> int:
    """Most units ``max_keep`` lets ``group`` keep (at least one)."""
    return max(1, math.floor(config.max_keep * group.size + 1e-9))


def _unit_step(group: Group, round_to: int) -> int:
    """Smallest unit count whose width is a multiple of ``round_to`` in every producing layer
    (root module members; parameter axes such as a per-head bias table do not count).

    Not :func:`unit_width`: ``round_to`` is about each producing layer's own width, so every
    root layer's average channels per unit counts (a layer whose channels do not split evenly
    into units counts 1), where the budget's cost of a unit is the narrowest of them all."""
    step = 1
    for member in group.members:
        if not member.root or member.kind != "module":
            continue
        channels = int(in_sorted(member.units, group.units).sum()) * member.width
        width = channels // group.size if channels % group.size == 0 else 1
        step = math.lcm(step, round_to // math.gcd(round_to, max(width, 1)))
    return step


def _rounded(keep: int, group: Group, round_to: int | None, floor: int = 1,
             ceiling: int | None = None) -> int:
    """``keep`` rounded up to ``round_to`` and to the group's own step (a kernel's layout
    rule: grouped products of expert weights want 16-byte strides), never above its size;
    rounded down instead where rounding up would pass ``ceiling`` (``max_keep``) and a
    multiple at or above ``floor`` (``min_keep``) fits below it."""
    step = group.step
    if round_to is not None and round_to > 1:
        step = math.lcm(step, _unit_step(group, round_to))
    if step == 1:
        return keep
    up = min(group.size, math.ceil(keep / step) * step)
    if ceiling is not None and up > ceiling:
        down = ceiling // step * step
        if down >= max(1, floor):
            return down
    return up


def allocate(groups: Sequence[Group], scores: Sequence[Tensor],
             config: Allocation) -> list[Tensor]:
    """A boolean keep-mask over ``group.units`` for every group (scores: higher = keep)."""
    return _allocate(groups, scores, config, None)


def _allocate(groups: Sequence[Group], scores: Sequence[Tensor], config: Allocation,
              widths: Sequence[int] | None) -> list[Tensor]:
    """:func:`allocate` given :func:`unit_width` of every group, for a caller that allocates
    the same groups many times (a target search); computed here when None."""
    parts = [_partial_members(g) for g in groups]
    reserved = [None if p is None else _reserved(p, s, g.size)
                for g, s, p in zip(groups, scores, parts, strict=True)]
    bounds = [_keep_bounds(g, config, 0 if r is None else int(r.sum()))
              for g, r in zip(groups, reserved, strict=True)]
    if config.global_ranking:
        if widths is None:
            widths = [unit_width(g) for g in groups]
        counts = _global_counts(groups, scores, config.ratio, widths, bounds)
    else:
        counts = [g.size - math.floor(_group_ratio(g, config) * g.size + 1e-9) for g in groups]
    masks = []
    over: list[str] = []
    for group, score, keep, (floor, ceiling), part, held in zip(
            groups, scores, counts, bounds, parts, reserved, strict=True):
        keep = _rounded(max(min(keep, ceiling), floor), group, config.round_to, floor, ceiling)
        if keep > ceiling and config.max_keep < 1:
            over.append(_over_ceiling(group, config, keep, floor, ceiling))
        cells = None if part is None or config.global_ranking else _attribute_cells(group)
        mask = _top_mask(score, group.size, keep) if cells is None else \
            _by_cells(score, keep, cells)
        if part is not None and held is not None and not all(bool(mask[p].any()) for p in part):
            mask = _reserved_then_top(score, keep, held)
        masks.append(mask)
    if over:
        warn(f"max_keep={config.max_keep} is exceeded: {'; '.join(over[:3])}")
    return masks


def _over_ceiling(group: Group, config: Allocation, keep: int, floor: int,
                  ceiling: int) -> str:
    """Why ``group`` keeps more than ``max_keep`` allows: ``min_keep`` rounds up past it,
    or no multiple of ``round_to`` (or of the group's own step) fits under it."""
    said = f"{group.describe()} keeps {keep} where max_keep allows {ceiling}"
    if floor > ceiling:
        return (f"{said} (min_keep={config.min_keep} rounds up to {floor} of its "
                f"{group.size} units, and min_keep wins)")
    if config.round_to is not None and config.round_to > 1:
        return f"{said} (round_to={config.round_to} has no multiple at or under it)"
    return (f"{said} (it keeps multiples of {group.step} units, a kernel's layout rule, and "
            f"none fits under it)")


def _keep_bounds(group: Group, config: Allocation, reserved: int) -> tuple[int, int]:
    """Fewest and most units ``group`` keeps: ``min_keep`` and ``max_keep``, both raised to
    the ``reserved`` units that keep every layer of a concat a channel."""
    return (max(_floor_keep(group, config), reserved),
            max(_ceiling_keep(group, config), reserved))


def _partial_members(group: Group) -> list[Tensor] | None:
    """Positions in ``group.units`` of each layer or bound attribute that holds only some of
    them (a group that spans a concat, or the parts of a split that follow pruning, each
    read by its own layer and sized by its own attribute), ascending; None where every one
    holds every unit (the common case)."""
    members = [m for m in group.members if m.kind in ("module", "attr")]
    if all(m.units.numel() == group.size for m in members):
        return None
    parts = []
    for member in members:
        _, pos = positions_in(member.units.reshape(-1), group.units)
        pos = torch.unique(pos)  # a unit of several channels appears once per channel
        if 0 < pos.numel() < group.size:
            parts.append(pos)
    return parts or None


def _attribute_cells(group: Group) -> list[np.ndarray] | None:
    """The positions of a group's units split by which of its size attributes hold them,
    where two or more attributes hold different parts (EfficientViT's ``split([self.key_dim,
    self.key_dim, self.val_dim])``: ``key_dim``'s query/key channels, ``val_dim``'s value
    channels, which are the residual's); None otherwise (a concat's layers are ranked
    together)."""
    parts = []
    for member in group.members:
        units = member.units.reshape(-1)
        if member.kind != "attr" or member.follows:
            continue
        held = torch.unique(units)
        if held.numel() > 1 or units.numel() == 1:
            # (an attribute may hold each of its units twice: PaLM's ff_inner2, both halves
            # of every SwiGLU unit; one holding one unit again and again counts channels
            # within it: a rotary width inside a head)
            _, pos = positions_in(held, group.units)
            parts.append(pos.numpy())
    if len(parts) < 2 or all(p.size == group.size for p in parts):
        return None
    held = np.zeros((len(parts), group.size), dtype=bool)
    for row, part in enumerate(parts):
        held[row, part] = True
    _, cell = np.unique(held, axis=1, return_inverse=True)
    cell = cell.reshape(-1)
    cells = [np.flatnonzero(cell == c) for c in range(int(cell.max()) + 1)]
    return cells if len(cells) > 1 else None


def _by_cells(score: Tensor, keep: int, cells: list[np.ndarray]) -> Tensor:
    """Keep-mask of ``keep`` units shared among ``cells`` in proportion to their sizes (the
    largest remainders rounded up, ties to the earlier cell; at least one each, so a group
    with more cells than ``keep`` keeps more), the best scores within each."""
    sizes = np.array([c.size for c in cells])
    share = keep * sizes / sizes.sum()
    counts = np.maximum(np.floor(share + 1e-9).astype(np.int64), 1)
    short = keep - int(counts.sum())
    if short > 0:
        order = np.argsort(-(share - np.floor(share + 1e-9)), kind="stable")
        room = [c for c in order if counts[c] < sizes[c]]
        counts[room[:short]] += 1
    mask = torch.zeros(score.numel(), dtype=torch.bool)
    for cell, count in zip(cells, counts, strict=True):
        pos = torch.from_numpy(cell)
        mask[pos[_top_mask(score[pos], cell.size, int(count))]] = True
    return mask


def _reserved(parts: list[Tensor], score: Tensor, size: int) -> Tensor:
    """Mask of the units a concat (or split) group keeps whatever the count, so that no layer
    or size attribute holding part of it is left without a channel (it could not run): each
    one's best unit, ties to the lower position, unless a unit kept for an earlier one is
    already one of its own."""
    held = torch.zeros(size, dtype=torch.bool)
    for pos in parts:
        if not bool(held[pos].any()):
            held[pos[_top_mask(score[pos], pos.numel(), 1)]] = True
    return held


def _reserved_then_top(score: Tensor, keep: int, held: Tensor) -> Tensor:
    """The ``held`` units and the best of the rest up to ``keep`` in all (``keep`` is at least
    as many as ``held``: :func:`_keep_bounds`), ties to the lower index."""
    free = (~held).nonzero().flatten()
    mask = held.clone()
    mask[free[_top_mask(score[free], free.numel(), keep - int(held.sum()))]] = True
    return mask


def _top_mask(score: Tensor, size: int, keep: int) -> Tensor:
    """True at the ``keep`` highest scores, ties to the lower index."""
    if score.device.type == "cpu" and score.dtype in _NUMPY_SORTED and not score.requires_grad:
        values = score.numpy()
        if not np.isnan(values).any():
            # without NaN, a stable ascending sort of -score is torch's stable descending one
            flags = np.zeros(size, dtype=bool)
            flags[np.argsort(-values, kind="stable")[:keep]] = True
            return torch.from_numpy(flags)
    mask = torch.zeros(size, dtype=torch.bool)
    order = torch.argsort(score, descending=True, stable=True)
    mask[order[:keep]] = True
    return mask


_NUMPY_SORTED = (torch.float32, torch.float64)


def unit_width(group: Group) -> int:
    """Channels one unit of ``group`` spans: the fewest it takes from any layer dim that holds
    it — 1 for a conv channel (also one feeding a flatten block), ``head_dim`` for an attention
    head (the heads dim of ``nn.MultiheadAttention``, a hand-written head's rows in its output
    projection), a ResNeXt group's width. Units of one group that differ (a concat of unlike
    producers) count their mean, rounded.

    Not :func:`_unit_step`: this is what removing one unit costs the global budget, read from
    every layer that holds the unit, consumers too (a head's rows in its output projection),
    and the narrowest wins, where rounding needs each producing layer's width on its own."""
    size = group.size
    ids = group.units.numpy()
    unset = np.iinfo(np.int64).max
    fewest: np.ndarray | int = unset
    for member in group.members:
        if member.kind != "module":
            continue  # parameter axes and size attributes are not layer channels
        flat = member.units.numpy().reshape(-1)
        if flat.size == size and np.array_equal(flat, ids):  # one index per unit
            if member.width == 1:
                return 1  # nothing is narrower than one channel
            fewest = np.minimum(fewest, member.width)
            continue
        found, pos = search_sorted(flat, ids)
        counts = np.bincount(pos[found], minlength=size) * member.width
        fewest = np.where(counts > 0, np.minimum(fewest, counts), fewest)
    held = np.asarray(fewest).reshape(-1)
    held = held[held < unset]
    return max(1, round(float(held.mean()))) if held.size else 1


def _global_counts(groups: Sequence[Group], scores: Sequence[Tensor], ratio: float,
                   widths: Sequence[int], bounds: Sequence[tuple[int, int]]) -> list[int]:
    """Units kept per group when the lowest scores across all groups go first.

    The budget is ``ratio`` of all prunable *channels*, and a unit removed costs its
    :func:`unit_width`: a head of ``head_dim`` rows counts as ``head_dim`` channels, not one
    (counted as one, every head that survives shrank the budget and the removed fraction
    missed ``ratio``). A group's mean-normalised scores are relative to its average unit,
    which for units of one width is its average channel, so a head ranks per channel against
    channels. A unit wider than what is left of the budget is passed over and the ranking
    goes on to narrower ones below it, so the budget is met without being exceeded. With
    every unit one channel wide this is the plain count of units. ``bounds``: each group's
    (fewest, most) units kept, from :func:`_keep_bounds`.
    """
    floors = [floor for floor, _ in bounds]
    ceilings = [ceiling for _, ceiling in bounds]
    total = sum(g.size * w for g, w in zip(groups, widths, strict=True))
    budget = math.floor(ratio * total + 1e-9)
    budget -= sum((g.size - c) * w for g, c, w in zip(groups, ceilings, widths, strict=True))
    entries = sorted(
        (float(s), gi) for gi, score in enumerate(scores) for s in score.tolist()
    )
    keep = [min(g.size, c) for g, c in zip(groups, ceilings, strict=True)]
    narrowest = min(widths, default=1)
    # max_keep already took each group's lowest units: the ranking starts above them (else a
    # group's next unit would go at the rank of one already gone, before better-ranked ones)
    taken = [g.size - k for g, k in zip(groups, keep, strict=True)]
    removed = 0
    for _, gi in entries:
        if budget - removed < narrowest:
            break
        if taken[gi]:
            taken[gi] -= 1
        elif keep[gi] > floors[gi] and removed + widths[gi] <= budget:
            keep[gi] -= 1
            removed += widths[gi]
    return keep
