"""Gradient criteria: |g|, Taylor |w·g|, |w| + λ|g|, SNIP and diagonal Fisher / OBD.

Each is a :class:`~prunekit.importance.base.DataCriterion`: ``prepare`` computes one
gradient statistic ``G`` per tensor on the calibration batches (see
:mod:`prunekit.importance.data` for per-batch vs per-sample accumulation) and
``score_with(w, G)`` applies the criterion's formula, element-wise:

====================  ===========================  ======================================
criterion             statistic ``G``              score
====================  ===========================  ======================================
``grad``              E|g|                         |G|
``taylor``            E|g|                         |w·G| = E|w·g| (Molchanov et al. 2017)
``wlg``               E|g|                         |w| + λ|G| (λ = ``lam``, default 1)
``snip``              |E g| / Σ_all |w·E g|        |w·G| (Lee et al. 2019; one batch at
                                                   initialisation, normalised over all
                                                   scored tensors)
``fisher``            sqrt(E[g²])                  ½·(w·G)² = ½·w²·E[g²] (OBD saliency with
                                                   H_ii ≈ E[g²], the empirical Fisher)
====================  ===========================  ======================================

A group of elements (kernel, block, channel) scores the *sum* of its element scores: the
group form of Taylor (Molchanov et al. 2019, summed over the group) and of OBD (the
diagonal saliency of removing the whole group). The formulas also accept a raw gradient
as ``G`` (what the structured engine's ``WeightView.grad`` holds after ``backward()``):
every formula takes ``|G|`` or ``G²``.

Masked weights: gradients flow to the unmasked ``original`` times the mask, so a pruned
entry has ``w = 0`` and ``g = 0`` and scores 0, the minimum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from prunekit.importance.base import register_criterion, score_dtype, score_values
from prunekit.importance.data import (
    CalibrationData,
    DataAwareScoring,
    GradientStats,
    check_positive,
    finite_or_zero,
    gradient_statistics,
)

__all__ = [
    "SNIP",
    "Fisher",
    "GradientMagnitude",
    "Taylor",
    "WeightPlusGradient",
    "gradient_statistic",
]

Statistic = Literal["abs_mean", "abs_of_mean", "rms"]


def _pick(stats: GradientStats, statistic: Statistic) -> Tensor:
    if statistic == "abs_mean":
        return stats.abs_mean
    if statistic == "abs_of_mean":
        return stats.mean.abs()
    return stats.sq_mean.sqrt()


def gradient_statistic(
    model: nn.Module, params: Mapping[str, Tensor], data: CalibrationData, statistic: Statistic
) -> dict[str, Tensor]:
    """``G`` per tensor: E|g| ("abs_mean"), |E g| ("abs_of_mean") or sqrt(E[g²]) ("rms")."""
    stats = gradient_statistics(model, params, data)
    return {name: finite_or_zero(_pick(s, statistic)) for name, s in stats.items()}


class _GradientCriterion(DataAwareScoring):
    """Shared parts: needs data; its statistic is a gradient statistic."""

    name: str
    statistic: Statistic
    needs_data: bool = True

    def prepare(
        self, model: nn.Module, params: Mapping[str, Tensor], data: CalibrationData
    ) -> Mapping[str, Tensor]:
        return gradient_statistic(model, params, data, self.statistic)


@dataclass(frozen=True)
class GradientMagnitude(_GradientCriterion):
    """|g|: mean gradient magnitude over the calibration batches."""

    name: str = "grad"
    statistic: Statistic = "abs_mean"

    def score_with(self, weight: Tensor, statistic: Tensor) -> Tensor:
        return statistic.to(score_dtype(weight)).abs()


@dataclass(frozen=True)
class Taylor(_GradientCriterion):
    """First-order Taylor |w·g|: the loss change from zeroing w, to first order."""

    name: str = "taylor"
    statistic: Statistic = "abs_mean"

    def score_with(self, weight: Tensor, statistic: Tensor) -> Tensor:
        return (score_values(weight) * statistic.to(score_dtype(weight))).abs()


@dataclass(frozen=True)
class WeightPlusGradient(_GradientCriterion):
    """|w| + λ|g| (λ = ``lam``): magnitude with a gradient bonus."""

    lam: float = 1.0
    name: str = "wlg"
    statistic: Statistic = "abs_mean"

    def __post_init__(self) -> None:
        check_positive("lam", self.lam)

    def score_with(self, weight: Tensor, statistic: Tensor) -> Tensor:
        return score_values(weight).abs() + self.lam * statistic.to(score_dtype(weight)).abs()


@dataclass(frozen=True)
class SNIP(_GradientCriterion):
    """Connection sensitivity |w·g| / Σ|w·g| at initialisation (use one or a few batches)."""

    name: str = "snip"
    statistic: Statistic = "abs_of_mean"

    def prepare(
        self, model: nn.Module, params: Mapping[str, Tensor], data: CalibrationData
    ) -> Mapping[str, Tensor]:
        stats = gradient_statistic(model, params, data, self.statistic)
        total = sum(float((score_values(params[n]) * s).abs().sum()) for n, s in stats.items())
        if total == 0:
            return stats
        return {name: s / total for name, s in stats.items()}

    def score_with(self, weight: Tensor, statistic: Tensor) -> Tensor:
        return (score_values(weight) * statistic.to(score_dtype(weight))).abs()


@dataclass(frozen=True)
class Fisher(_GradientCriterion):
    """OBD saliency ½·w²·H_ii with the diagonal empirical Fisher H_ii ≈ E[g²]."""

    name: str = "fisher"
    statistic: Statistic = "rms"

    def score_with(self, weight: Tensor, statistic: Tensor) -> Tensor:
        return 0.5 * (score_values(weight) * statistic.to(score_dtype(weight))).square()


GRAD = register_criterion(GradientMagnitude())
TAYLOR = register_criterion(Taylor())
WLG = register_criterion(WeightPlusGradient())
SNIP_CRITERION = register_criterion(SNIP())
FISHER = register_criterion(Fisher())
