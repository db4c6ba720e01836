"""Magnitude pruning: score |W|, compared over the whole layer (or within N:M groups)."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.llm.solvers.base import Pattern, select_mask, write_weight_and_mask


class MagnitudeSolver:
    """Data-free baseline; ``add_batch`` is accepted and ignored so the driver stays uniform."""

    def __init__(self, layer: nn.Linear) -> None:
        self.layer = layer

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        del inp, out

    def prune(self, sparsity: float, pattern: Pattern) -> torch.Tensor:
        keep = select_mask(self.layer.weight.detach().abs(), sparsity, pattern, per_row=False)
        write_weight_and_mask(self.layer, None, keep)
        return keep

    def free(self) -> None:
        pass
