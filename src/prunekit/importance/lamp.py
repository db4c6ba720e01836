"""LAMP: layer-adaptive magnitude scores for one global unstructured ranking (Lee et al. 2021).

Within one tensor, with its squared weights sorted ascending (``u`` before ``v`` when
``w_u² <= w_v²``), the score of weight ``u`` is its share of the squared mass that is at
least as large:

    score(u) = w_u² / Σ_{v >= u} w_v²

so every tensor's largest weight scores 1 and a global threshold on these scores prunes
each layer by how concentrated its mass is, not by its raw scale. Ties follow the stable
sort order (lower flat index first). Already-masked weights are 0 and score 0. Data-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.importance.base import register_criterion, score_values

__all__ = ["LAMP", "lamp_scores"]


def lamp_scores(weight: Tensor) -> Tensor:
    """LAMP score of every element of ``weight`` (same shape), computed over the whole tensor."""
    squared = score_values(weight).reshape(-1).square()
    ordered, order = torch.sort(squared, stable=True)
    # Σ of the squares from each position to the end of the ascending order
    tail = ordered.flip(0).cumsum(0).flip(0)
    ratio = torch.where(tail > 0, ordered / tail.clamp_min(torch.finfo(tail.dtype).tiny),
                        torch.zeros_like(ordered))
    out = torch.empty_like(ratio)
    out[order] = ratio
    return out.reshape(weight.shape)


@dataclass(frozen=True)
class LAMP:
    """Layer-adaptive magnitude; a group (kernel, block) scores the sum of its LAMP scores."""

    name: str = "lamp"
    needs_data: bool = False

    def score(self, weight: Tensor, *, generator: torch.Generator) -> Tensor:
        return lamp_scores(weight)

    def combine(self, scores: Tensor, dim: int) -> Tensor:
        return scores.sum(dim=dim)


LAMP_CRITERION = register_criterion(LAMP())
