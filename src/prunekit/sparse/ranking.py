"""Choosing the k lowest-scoring units, exactly, deterministically and as torch does."""

from __future__ import annotations

import torch


def prune_count(fraction: float, total: int) -> int:
    """Units to remove for ``fraction`` of ``total``: ``round(fraction * total)``.

    Python's ``round`` (half to even) is what ``torch.nn.utils.prune`` uses for a float
    ``amount``, so counts match it exactly.
    """
    return round(fraction * total)


def smallest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) marking exactly ``k`` of its smallest entries.

    When the k smallest are unique (no tie straddles the cut) they are found in linear time
    with ``kthvalue``. Otherwise the tied entries are chosen by
    ``torch.topk(scores.flatten(), k, largest=False)`` — the very call that
    ``torch.nn.utils.prune.L1Unstructured`` makes — so the mask is deterministic for a
    given input and identical to torch's pruning of the same tensor, ties included.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    cut = torch.kthvalue(flat, k).values
    marked = flat <= cut
    # a tie straddles the cut: let topk choose among the tied entries, as torch does
    if int(torch.count_nonzero(marked)) != k:
        marked = torch.zeros_like(flat, dtype=torch.bool)
        marked[torch.topk(flat, k, largest=False).indices] = True
    return marked.reshape(scores.shape)
