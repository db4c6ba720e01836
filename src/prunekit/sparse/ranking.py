"""Choosing the k lowest-scoring units, exactly and deterministically."""

from __future__ import annotations

import torch


def prune_count(fraction: float, total: int) -> int:
    """Units to remove for ``fraction`` of ``total``: ``round(fraction * total)``.

    Python's ``round`` (half to even) is what ``torch.nn.utils.prune`` uses for a float
    ``amount``, so counts match it exactly.
    """
    return round(fraction * total)


def smallest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) marking its ``k`` smallest entries.

    Ties at the cut are broken by flat index: the lower index is marked first. Runs in
    linear time (``kthvalue`` plus two comparisons), no full sort.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    cut = torch.kthvalue(flat, k).values
    marked = flat < cut
    missing = k - int(marked.sum())
    if missing:
        at_cut = torch.nonzero(flat == cut).squeeze(1)
        marked[at_cut[:missing]] = True
    return marked.reshape(scores.shape)
