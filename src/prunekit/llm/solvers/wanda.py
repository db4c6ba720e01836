"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs").

Score S_ij = |W_ij| · ‖X_j‖₂, the weight magnitude times the L2 norm of input feature j
over all calibration tokens; weights are compared within each output row (or N:M group).
No weight update.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.llm.solvers.base import Pattern, select_mask, write_weight_and_mask


class WandaSolver:
    def __init__(self, layer: nn.Linear) -> None:
        self.layer = layer
        self.sq_norm: torch.Tensor | None = torch.zeros(
            layer.in_features, dtype=torch.float64, device=layer.weight.device
        )

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        del out
        assert self.sq_norm is not None, "add_batch after free()"
        x = inp.reshape(-1, inp.shape[-1]).to(torch.float64)
        self.sq_norm += (x * x).sum(dim=0)

    def scores(self) -> torch.Tensor:
        """|W| · ‖X_j‖₂ (float32, shape of the weight)."""
        assert self.sq_norm is not None, "scores after free()"
        norm = self.sq_norm.sqrt().to(torch.float32)
        return self.layer.weight.detach().float().abs() * norm.unsqueeze(0)

    def prune(self, sparsity: float, pattern: Pattern) -> torch.Tensor:
        keep = select_mask(self.scores(), sparsity, pattern, per_row=True)
        write_weight_and_mask(self.layer, None, keep)
        return keep

    def free(self) -> None:
        self.sq_norm = None
