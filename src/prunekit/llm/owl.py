"""OWL: outlier-weighted layerwise sparsity (Yin et al. 2024, "Outlier Weighed Layerwise
Sparsity: A Missing Secret Sauce for Pruning LLMs to High Sparsity").

For each block, the outlier ratio D is the fraction of Wanda scores |W_ij|·‖X_j‖₂ (all
prunable layers of the block together) above ``m`` times their mean. Ratios are rescaled
linearly to a spread of 2λ and shifted so their mean is the target density 1 − s; blocks
with more outliers keep more weights. Block sparsity = 1 − density, so the mean block
sparsity equals s exactly (same as the reference code; blocks share one layer layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prunekit.errors import ConfigError
from prunekit.llm.solvers import LayerSolver, WandaSolver


@dataclass(frozen=True)
class OWLConfig:
    """``m``: outlier threshold as a multiple of the mean score; ``lam``: max deviation λ."""

    m: float = 5.0
    lam: float = 0.08


def outlier_ratio(solvers: dict[str, LayerSolver], m: float) -> tuple[int, int]:
    """(outlier count, score count) over the Wanda scores of one block's layers."""
    wanda = [s for s in solvers.values() if isinstance(s, WandaSolver)]
    scores = torch.cat([s.scores().reshape(-1) for s in wanda]) if wanda else torch.zeros(0)
    if scores.numel() == 0:
        return 0, 0
    return int((scores > m * scores.mean()).sum()), scores.numel()


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """Per-block sparsities from per-block outlier ratios; their mean is ``sparsity``."""
    if lam < 0:
        raise ConfigError(f"OWL lam={lam!r} must be >= 0 (the paper uses 0.08)")
    r = torch.tensor(list(ratios), dtype=torch.float64)
    if r.numel() == 0:
        return []
    spread = r.max() - r.min()
    scaled = (r - r.min()) / spread * (2 * lam) if spread > 0 else torch.zeros_like(r)
    density = scaled - scaled.mean() + (1.0 - sparsity)
    out = (1.0 - density).tolist()
    if min(out) < 0 or max(out) >= 1:
        raise ConfigError(
            f"OWL lam={lam} moves block sparsities to [{min(out):.3f}, {max(out):.3f}], outside "
            f"[0, 1) for sparsity={sparsity}; use a smaller lam"
        )
    return [float(v) for v in out]
