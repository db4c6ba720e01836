"""How many units each dependency group loses: uniform, per-layer or global ranking.

``ratio`` is the fraction of a group's *channels* (units) removed — ``ratio=0.5`` halves
the width of every prunable group; the resulting fraction of parameters and MACs differs
(a conv between two halved groups keeps about a quarter of its weights), and
``prune`` reports it. With ``global_ranking`` the same total number of units is removed
wherever the (normalised) scores are lowest, so some groups lose more than others.
Every group keeps at least ``max(1, ceil(min_keep · units))`` units and at most
``max(1, floor(max_keep · units))`` (so global ranking prunes every group a little), and
``round_to`` keeps widths at multiples of N (rounded up, never above the original width).
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

from prunekit.errors import ConfigError, check_fraction
from prunekit.graph.dependency import Group
from prunekit.graph.labels import in_sorted

__all__ = ["Allocation", "allocate"]


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
        check_fraction("min_keep", self.min_keep, allow_one=True)
        check_fraction("max_keep", self.max_keep, allow_one=True)
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


def _unit_step(group: Group, round_to: int) -> int:
    """Smallest unit count whose width is a multiple of ``round_to`` in every producing layer
    (root module members; parameter axes such as a per-head bias table do not count)."""
    step = 1
    for member in group.members:
        if not member.root or member.kind != "module":
            continue
        channels = int(in_sorted(member.units, group.units).sum()) * member.width
        width = channels // group.size if channels % group.size == 0 else 1
        step = math.lcm(step, round_to // math.gcd(round_to, max(width, 1)))
    return step


def _rounded(keep: int, group: Group, round_to: int | None) -> int:
    if round_to is None or round_to <= 1:
        return keep
    step = _unit_step(group, round_to)
    return min(group.size, math.ceil(keep / step) * step)


def allocate(groups: Sequence[Group], scores: Sequence[Tensor], config: Allocation) -> list[Tensor]:
    """A boolean keep-mask over ``group.units`` for every group (scores: higher = keep)."""
    counts = [group.size for group in groups]
    if config.global_ranking:
        counts = _global_counts(groups, scores, config)
    else:
        counts = [g.size - math.floor(_group_ratio(g, config) * g.size + 1e-9) for g in groups]
    masks = []
    for group, score, keep in zip(groups, scores, counts, strict=True):
        ceiling = max(1, math.floor(config.max_keep * group.size + 1e-9))
        keep = max(min(keep, ceiling), _floor_keep(group, config))
        keep = _rounded(keep, group, config.round_to)
        masks.append(_top_mask(score, group.size, keep))
    return masks


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


def _global_counts(groups: Sequence[Group], scores: Sequence[Tensor],
                   config: Allocation) -> list[int]:
    """Units kept per group when the lowest scores across all groups go first."""
    total = sum(g.size for g in groups)
    budget = math.floor(config.ratio * total + 1e-9)
    budget -= sum(g.size - max(1, math.floor(config.max_keep * g.size + 1e-9)) for g in groups)
    entries = sorted(
        (float(s), gi) for gi, score in enumerate(scores) for s in score.tolist()
    )
    keep = [min(g.size, max(1, math.floor(config.max_keep * g.size + 1e-9))) for g in groups]
    floors = [_floor_keep(g, config) for g in groups]
    removed = 0
    for _, gi in entries:
        if removed >= budget:
            break
        if keep[gi] > floors[gi]:
            keep[gi] -= 1
            removed += 1
    return keep
