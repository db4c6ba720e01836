"""Group importance: one score per prunable unit of a dependency group.

A group criterion receives, for every member of the group, the member's tensors as 2-D
views ``[indices, -1]`` (handed over by layer adapters) and the unit of each index; it
never looks at layer types. Per member, element scores of all rows that belong to one unit
are added and combined (L2: sqrt of the sum of squares, so a flatten block scores as one
vector); the members' unit scores are then aggregated (sum / mean / max) and optionally
normalised within the group, which makes scores of different groups comparable for
global ranking.

Registered: ``l1``, ``l2`` (filter norms, Li et al. 2017), ``random``, ``bn_scale``
(|γ| of norm layers, network slimming; groups without a norm layer fall back to ``l2``;
train with :func:`bn_l1_penalty` to make it sparse) and ``fpgm`` (distance of each
producer filter to the others, He et al. 2019 — units near the geometric median are
redundant). Gradient-based criteria plug in here by reading ``WeightView.grad``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunekit.errors import ConfigError, check_choice
from prunekit.graph.dependency import Group, Member
from prunekit.graph.labels import positions_in, search_sorted
from prunekit.importance.base import Criterion, get_criterion, is_elementwise
from prunekit.structured.adapters import WeightView

__all__ = [
    "Aggregation",
    "GroupCriterion",
    "MemberViews",
    "Normalization",
    "bn_l1_penalty",
    "get_group_criterion",
    "group_criterion_names",
    "register_group_criterion",
    "score_groups",
    "unit_positions",
]

Aggregation = Literal["sum", "mean", "max"]
Normalization = Literal["none", "mean", "max", "sum", "standard"]


@dataclass(frozen=True)
class MemberViews:
    """One group member and its tensors as ``[indices, -1]`` views."""

    member: Member
    views: Sequence[WeightView]


@runtime_checkable
class GroupCriterion(Protocol):
    """Scores the units of a group: one score per member and unit (NaN where the member
    does not hold the unit), shape ``[members, units]``."""

    @property
    def name(self) -> str: ...

    @property
    def needs_data(self) -> bool: ...

    def member_scores(self, group: Group, members: Sequence[MemberViews], *,
                      generator: torch.Generator) -> Tensor: ...


def unit_positions(group: Group, member: Member) -> tuple[Tensor, Tensor]:
    """(index rows of ``member`` inside the group, their unit position in ``group.units``)."""
    return positions_in(member.units, group.units)


@dataclass(frozen=True)
class ElementNorm:
    """Unit score from an element criterion (``l1``, ``l2``, ``random``) over all rows."""

    name: str
    kinds: tuple[str, ...] = ("weight", "bias", "scale")
    needs_data: bool = False

    def member_scores(self, group: Group, members: Sequence[MemberViews], *,
                      generator: torch.Generator) -> Tensor:
        return self.batch_scores([(group, members)], generator=generator)[0]

    def batch_scores(self, groups: Sequence[tuple[Group, Sequence[MemberViews]]], *,
                     generator: torch.Generator) -> list[Tensor]:
        """``member_scores`` of every group at once: each group's ``[members, units]`` block
        is a slice of one flat buffer, filled by one index_add and one combine. Slots of
        different groups are disjoint, so each slot sums the same values in the same order
        as a group on its own."""
        element = get_criterion(self.name if self.name in {"l1", "l2", "random"} else "l2")
        values: list[Tensor] = []
        held: list[np.ndarray] = []  # units of every member with views, all groups
        starts: list[int] = []  # its row's first slot
        owners: list[int] = []  # its group
        blocks: list[tuple[int, int, int]] = []  # (start, members, units) per group
        counts: list[int] = []  # views of each member in ``held``
        tensors: list[Tensor] = []
        total = 0
        for g, (group, members) in enumerate(groups):
            size = group.size
            for i, entry in enumerate(members):
                views = [v.tensor for v in entry.views if v.kind in self.kinds]
                if not views:
                    continue
                tensors += views
                counts.append(len(views))
                held.append(entry.member.units.numpy().reshape(-1))
                starts.append(total + i * size)
                owners.append(g)
            blocks.append((total, len(members), size))
            total += len(members) * size
        sums = iter(_all_row_sums(element, tensors, generator))
        for count in counts:
            per_row = next(sums)
            for _ in range(count - 1):  # every view of a member has one row per index
                per_row = per_row + next(sums)
            values.append(per_row)
        # float32 as _row_sums gives, not the default dtype (PINN code sets float64)
        raw = torch.zeros(total, dtype=torch.float32)
        missing = torch.ones(total, dtype=torch.bool)
        if held:
            index = _member_slots(held, starts, owners,
                                  [group.units.numpy() for group, _ in groups])
            value = torch.cat(values) if len(values) > 1 else values[0]
            found = index >= 0
            if not found.all():  # rows of units outside the group
                value, index = value[torch.from_numpy(found)], index[found]
            index_t = torch.from_numpy(index)
            raw.index_add_(0, index_t, value)
            missing.index_fill_(0, index_t, False)
        out = element.combine(raw.unsqueeze(1), 1).masked_fill_(missing, float("nan"))
        return [out[start:start + count * size].view(count, size)
                for start, count, size in blocks]


def _row_sums(element: Criterion, tensor: Tensor, generator: torch.Generator) -> Tensor:
    """``element.score(tensor).sum(1).float()``: one value per row of a ``[rows, -1]`` view,
    on the CPU (where the flat score buffer and the allocation live; the weights may be on a
    GPU)."""
    if tensor.numel() > _CHUNK and tensor.shape[0] > 1 and tensor.stride(1) == 1 and \
            is_elementwise(element):
        # a big weight's scores in row blocks (a 100 MB temporary costs more than the sum);
        # each row's elements are adjacent, so its sum is reduced as in one call
        step = max(1, _CHUNK // max(1, tensor.shape[1]))
        return torch.cat([_row_sums(element, part, generator) for part in tensor.split(step)])
    summed = element.score(tensor, generator=generator).sum(1)
    summed = summed if summed.dtype == torch.float32 else summed.float()
    return summed if summed.is_cpu else summed.cpu()


_CHUNK = 1 << 20  # elements per block of a big weight's scores (_row_sums)
_BATCH_MIN = 6  # one-column views below which _all_row_sums scores them one by one


def _all_row_sums(element: Criterion, tensors: Sequence[Tensor],
                  generator: torch.Generator) -> list[Tensor]:
    """``_row_sums`` of every tensor. An element-wise criterion scores the one-column
    float32 CPU views (biases, norm scales: half the views of a CNN) in one call on their
    concatenation, whose rows are theirs: the same values in one op instead of one per view
    (below ``_BATCH_MIN`` such views the cat and split cost what they save)."""
    narrow = [i for i, t in enumerate(tensors)
              if t.shape[1] == 1 and t.dtype == torch.float32 and t.is_cpu] \
        if is_elementwise(element) else []
    if len(narrow) < _BATCH_MIN:
        return [_row_sums(element, t, generator) for t in tensors]
    out: list[Tensor | None] = [None] * len(tensors)
    joined = torch.cat([tensors[i] for i in narrow])
    parts = _row_sums(element, joined, generator).split([tensors[i].shape[0] for i in narrow])
    for i, part in zip(narrow, parts, strict=True):
        out[i] = part
    return [_row_sums(element, t, generator) if s is None else s
            for s, t in zip(out, tensors, strict=True)]


def _member_slots(held: list[np.ndarray], starts: list[int], owners: list[int],
                  units: list[np.ndarray]) -> np.ndarray:
    """Flat buffer slot of every row of the members in ``held`` (``starts[i]`` + the
    position of its unit in the sorted ``units[owners[i]]``), -1 where its unit is not
    there. One search over all groups: ``group · width + unit`` keys stay sorted."""
    flat = np.concatenate(held) if len(held) > 1 else held[0]
    counts = [a.size for a in held]
    sizes = np.array([a.size for a in units], dtype=np.int64)
    every = np.concatenate(units).astype(np.int64, copy=False)
    width = int(max(flat.max(initial=0), every.max(initial=0))) + 1
    owner = np.repeat(np.asarray(owners, dtype=np.int64), counts)
    keys = np.repeat(np.arange(len(units), dtype=np.int64), sizes) * width + every
    wanted = owner * width + flat
    found, pos = search_sorted(wanted, keys)
    first = np.concatenate(([0], np.cumsum(sizes)[:-1]))  # each group's first key
    base = np.repeat(np.asarray(starts, dtype=np.int64), counts) - first[owner]
    return np.where(found, base + pos, -1)


@dataclass(frozen=True)
class BNScale:
    """|γ| of the group's norm layers (views of kind ``scale``); ``l2`` where a group has none."""

    name: str = "bn_scale"
    needs_data: bool = False

    def member_scores(self, group: Group, members: Sequence[MemberViews], *,
                      generator: torch.Generator) -> Tensor:
        return self.batch_scores([(group, members)], generator=generator)[0]

    def batch_scores(self, groups: Sequence[tuple[Group, Sequence[MemberViews]]], *,
                     generator: torch.Generator) -> list[Tensor]:
        """``member_scores`` of every group (l1 and l2 draw nothing from ``generator``)."""
        scales = ElementNorm("l1", kinds=("scale",)).batch_scores(groups, generator=generator)
        bare = [i for i, s in enumerate(scales) if bool(torch.isnan(s).all())]
        if bare:
            fallback = ElementNorm("l2").batch_scores([groups[i] for i in bare],
                                                      generator=generator)
            for i, score in zip(bare, fallback, strict=True):
                scales[i] = score
        return scales


def _real(view: Tensor) -> Tensor:
    """A ``[rows, -1]`` view as float32 rows; a complex view's real and imaginary parts side
    by side (distances between rows are the same)."""
    if view.is_complex():
        return torch.view_as_real(view.detach()).reshape(view.shape[0], -1).float()
    return view.float()


@dataclass(frozen=True)
class FPGM:
    """Σ distance of a unit's filter to the other units' filters, per producer member."""

    name: str = "fpgm"
    needs_data: bool = False

    def member_scores(self, group: Group, members: Sequence[MemberViews], *,
                      generator: torch.Generator) -> Tensor:
        out = torch.full((len(members), group.size), float("nan"), dtype=torch.float32)
        for i, entry in enumerate(members):
            views = [_real(v.tensor).cpu() for v in entry.views if v.kind == "weight"]
            if not entry.member.root or not views:
                continue
            rows, pos = unit_positions(group, entry.member)
            matrix = torch.cat([v[rows] for v in views], dim=1)
            units = torch.zeros(group.size, matrix.shape[1], dtype=matrix.dtype).index_add_(
                0, pos, matrix)
            held = torch.zeros(group.size, dtype=torch.bool)
            held[pos] = True
            dist = torch.cdist(units[held], units[held]).sum(1)
            out[i, held] = dist
        if bool(torch.isnan(out).all()):
            return ElementNorm("l2").member_scores(group, members, generator=generator)
        return out


_CRITERIA: dict[str, GroupCriterion] = {}


def register_group_criterion(criterion: GroupCriterion, *, replace: bool = False) -> None:
    """Add a group criterion under ``criterion.name``."""
    if not isinstance(criterion, GroupCriterion):
        raise TypeError(
            f"register_group_criterion() needs an object with name, needs_data and "
            f"member_scores(), got {type(criterion).__name__}"
        )
    if criterion.name in _CRITERIA and not replace:
        raise ConfigError(f"group criterion {criterion.name!r} exists; pass replace=True")
    _CRITERIA[criterion.name] = criterion


def group_criterion_names() -> list[str]:
    return list(_CRITERIA)


def get_group_criterion(name: str | GroupCriterion) -> GroupCriterion:
    """The registered group criterion ``name`` (an object is returned as is)."""
    # a str has none of the protocol's attributes: skip the (slow) runtime protocol check
    if not isinstance(name, str) and isinstance(name, GroupCriterion):
        return name
    check_choice("importance", name, _CRITERIA)
    return _CRITERIA[name]


def score_groups(
    criterion: GroupCriterion,
    groups: Sequence[tuple[Group, Sequence[MemberViews]]],
    *,
    aggregation: Aggregation = "sum",
    normalization: Normalization = "none",
    seed: int = 0,
) -> list[Tensor]:
    """One score vector (aligned with ``group.units``) per group."""
    check_choice("aggregation", aggregation, ("sum", "mean", "max"))
    check_choice("normalization", normalization, ("none", "mean", "max", "sum", "standard"))
    generator = torch.Generator().manual_seed(seed)
    batch = getattr(criterion, "batch_scores", None) if type(criterion) in _BATCHED else None
    per_group = (batch(groups, generator=generator) if batch is not None
                 else [criterion.member_scores(group, members, generator=generator)
                       for group, members in groups])
    out = []
    for per_member in per_group:
        filled = torch.nan_to_num(per_member, nan=0.0)
        if aggregation == "sum":
            score = filled.sum(0)
        elif aggregation == "mean":
            score = filled.sum(0) / (~torch.isnan(per_member)).sum(0).clamp(min=1)
        else:
            present = ~torch.isnan(per_member)
            score = per_member.masked_fill(~present, float("-inf")).amax(0)
            score = torch.where(present.any(0), score, torch.zeros_like(score))
        out.append(_normalize(score, normalization))
    return out


def _normalize(score: Tensor, how: str) -> Tensor:
    if how == "none" or score.numel() == 0:
        return score
    if how == "standard":
        std = score.std() if score.numel() > 1 else score.new_ones(())
        return (score - score.mean()) / (std + 1e-12)
    scale = {"mean": score.mean(), "max": score.max(), "sum": score.sum()}[how]
    return score / (scale + 1e-12)


def bn_l1_penalty(model: nn.Module, strength: float) -> Tensor:
    """``strength · Σ|γ|`` over every BatchNorm scale: add it to the training loss so that
    ``importance="bn_scale"`` finds channels to remove (Liu et al. 2017, network slimming)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or strength < 0:
        raise ConfigError(f"strength={strength!r} must be a non-negative float, e.g. 1e-4")
    terms = [m.weight.abs().sum() for m in model.modules()
             if isinstance(m, _BatchNorm) and m.weight is not None]
    if not terms:
        raise ConfigError(
            f"bn_l1_penalty: {type(model).__name__} has no BatchNorm layer with a scale; "
            f"use another criterion than bn_scale"
        )
    return strength * torch.stack(terms).sum()


# built-in criteria whose batch_scores(groups) equals member_scores group by group (exact
# types: a subclass may override member_scores)
_BATCHED: tuple[type, ...] = (ElementNorm, BNScale)

for _criterion in (ElementNorm("l1"), ElementNorm("l2"), ElementNorm("random"), BNScale(), FPGM()):
    register_group_criterion(_criterion)
