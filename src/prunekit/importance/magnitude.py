"""Data-free criteria: L1 / L2 magnitude, the seeds' normalised magnitude, and random."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prunekit.importance.base import register_criterion, score_dtype, score_values


@dataclass(frozen=True)
class L1Magnitude:
    """|w|; a group scores the sum of its |w| (its L1 norm)."""

    name: str = "l1"
    needs_data: bool = False
    # score(cat(ts)) == cat(score(t)): callers may score several tensors in one call
    elementwise: ClassVar[bool] = True

    def score(self, weight: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        return score_values(weight).abs()

    def combine(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
        return scores.sum(dim=dim)


@dataclass(frozen=True)
class L2Magnitude:
    """w²; a group scores sqrt(Σ w²) (its L2 norm)."""

    name: str = "l2"
    needs_data: bool = False
    elementwise: ClassVar[bool] = True  # as L1Magnitude's

    def score(self, weight: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        return score_values(weight).square()

    def combine(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
        return scores.sum(dim=dim).sqrt()


@dataclass(frozen=True)
class NormalizedMagnitude:
    """|w| / Σ|w| over the whole tensor, so one threshold τ compares layers of any scale.

    An all-zero tensor scores 0 everywhere. A group scores the sum of its normalised scores.
    """

    name: str = "normalized"
    needs_data: bool = False

    def score(self, weight: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        magnitude = score_values(weight).abs()
        total = magnitude.sum()
        if total == 0:
            return magnitude
        return magnitude / total

    def combine(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
        return scores.sum(dim=dim)


@dataclass(frozen=True)
class RandomScore:
    """Uniform [0, 1) scores from the caller's seeded generator: the baseline criterion."""

    name: str = "random"
    needs_data: bool = False

    def score(self, weight: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        drawn = torch.rand(weight.shape, generator=generator, dtype=score_dtype(weight))
        return drawn.to(weight.device)

    def combine(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
        return scores.sum(dim=dim)


L1 = register_criterion(L1Magnitude())
L2 = register_criterion(L2Magnitude())
NORMALIZED = register_criterion(NormalizedMagnitude())
RANDOM = register_criterion(RandomScore())
