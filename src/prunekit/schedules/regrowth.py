"""RigL's mask update on one tensor: drop the weakest active weights, grow the strongest-gradient
inactive ones, keeping the number of active weights exactly (Evci et al. 2020, Alg. 1)."""

from __future__ import annotations

import torch

from prunekit.errors import check_fraction


def drop_and_grow(
    mask: torch.Tensor, weight: torch.Tensor, dense_grad: torch.Tensor, fraction: float
) -> torch.Tensor:
    """The new keep-mask after one RigL update of ``fraction`` of the active weights.

    ``k = floor(fraction · active)`` active entries with the smallest ``|weight|`` are dropped
    and the ``k`` entries inactive *before* the update with the largest ``|dense_grad|`` are
    grown (fewer if fewer are inactive), so ``new.sum() == mask.sum()``. Pure: inputs are not
    modified. Ties are broken as ``torch.topk`` breaks them.
    """
    fraction = check_fraction("fraction", fraction, allow_one=True)
    if not (mask.shape == weight.shape == dense_grad.shape):
        raise ValueError(
            f"mask {tuple(mask.shape)}, weight {tuple(weight.shape)} and dense_grad "
            f"{tuple(dense_grad.shape)} must have the same shape"
        )
    keep = mask.reshape(-1).to(torch.bool)
    active = int(keep.sum())
    k = min(int(fraction * active), keep.numel() - active)
    if k == 0:
        return mask.clone().to(torch.bool)
    inf = torch.tensor(float("inf"), device=weight.device, dtype=weight.dtype)
    magnitude = torch.where(keep, weight.detach().reshape(-1).abs(), inf)
    dropped = torch.topk(magnitude, k, largest=False).indices
    growth = torch.where(keep, -inf, dense_grad.detach().reshape(-1).abs().to(weight.dtype))
    grown = torch.topk(growth, k, largest=True).indices
    new = keep.clone()
    new[dropped] = False
    new[grown] = True
    return new.reshape(mask.shape)
