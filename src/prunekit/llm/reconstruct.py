"""Block-wise reconstruction: after a block is pruned, with its masks fixed, adjust the kept
weights by a few Adam steps so the block's outputs match the dense block's outputs on the
same calibration inputs (min Σ‖f_pruned(x) − f_dense(x)‖²).

Only the raw weights behind masked ``nn.Linear`` layers move; the mask parametrization
zeroes the gradient at pruned positions, so the sparsity pattern is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.llm.blocks import BlockInput, block_outputs, hidden_of
from prunekit.llm.solvers.base import weight_storage


@dataclass(frozen=True)
class ReconstructConfig:
    """``steps`` passes over the calibration inputs with Adam at learning rate ``lr``."""

    steps: int = 10
    lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.steps < 1 or not self.lr > 0:
            raise ConfigError(
                f"ReconstructConfig(steps={self.steps}, lr={self.lr}): need steps >= 1 and lr > 0 "
                "(e.g. steps=10, lr=1e-4)"
            )


def reconstruct_block(
    block: nn.Module,
    inputs: Sequence[BlockInput],
    targets: Sequence[torch.Tensor],
    layers: Sequence[nn.Linear],
    config: ReconstructConfig,
) -> tuple[float, float]:
    """Fit ``layers``' kept weights so ``block(inputs)`` ≈ ``targets``; (MSE before, after)."""
    params = [weight_storage(layer) for layer in layers]
    flags = [p.requires_grad for p in params]
    frozen = [p for p in block.parameters() if all(p is not q for q in params)]
    frozen_flags = [p.requires_grad for p in frozen]
    for p in params:
        p.requires_grad_(True)
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=config.lr)

    def mse() -> float:
        with torch.no_grad():
            outs = block_outputs(block, inputs)
            return sum(
                float((o - t).pow(2).mean()) for o, t in zip(outs, targets, strict=True)
            ) / len(outs)

    before = mse()
    try:
        with torch.enable_grad():
            for _ in range(config.steps):
                for item, target in zip(inputs, targets, strict=True):
                    out = hidden_of(block(*item.args, **item.kwargs))
                    loss = (out.float() - target.float()).pow(2).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
            p.grad = None
        for p, flag in zip(frozen, frozen_flags, strict=True):
            p.requires_grad_(flag)
    return before, mse()
