"""SparseGPT (Frantar & Alistarh 2023, "Massive Language Models Can Be Accurately Pruned
in One-Shot").

Layer-wise OBS: with H = 2 X Xᵀ / n from the calibration inputs, prune columns left to
right; when weight w_q is removed, the remaining weights of its row move by
−(w_q / [H⁻¹]_qq) · H⁻¹_{q,:} so the layer output changes least. The upper Cholesky
factor of H⁻¹ gives all the needed rows of the successively updated inverses at once
(paper §3.3). Updates are applied lazily per block of ``blocksize`` columns, and the mask
is chosen adaptively per block from w² / [H⁻¹]_qq² (paper §3.4, "adaptive mask
selection"). H is accumulated in float64.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.llm.solvers.base import (
    NMPattern,
    Pattern,
    nm_keep_mask,
    num_pruned,
    prune_lowest,
    write_weight_and_mask,
)


class SparseGPTSolver:
    def __init__(self, layer: nn.Linear, *, blocksize: int = 128, percdamp: float = 0.01) -> None:
        if blocksize < 1 or percdamp <= 0:
            raise ConfigError(
                f"SparseGPT needs blocksize >= 1 and percdamp > 0, got blocksize={blocksize}, "
                f"percdamp={percdamp}; the defaults are 128 and 0.01"
            )
        self.layer = layer
        self.blocksize = blocksize
        self.percdamp = percdamp
        cols = layer.in_features
        self.hessian: torch.Tensor | None = torch.zeros(
            cols, cols, dtype=torch.float64, device=layer.weight.device
        )
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        del out
        assert self.hessian is not None, "add_batch after free()"
        x = inp.reshape(-1, inp.shape[-1]).to(torch.float64)
        n = x.shape[0]
        # running mean of 2 x xᵀ over all tokens seen so far
        self.hessian *= self.nsamples / (self.nsamples + n)
        self.nsamples += n
        x = x * (2.0 / self.nsamples) ** 0.5
        self.hessian += x.T @ x

    def _inverse_cholesky(self, weight: torch.Tensor) -> torch.Tensor:
        """Upper Cholesky factor of the dampened H⁻¹; zeroes the columns of dead inputs."""
        assert self.hessian is not None, "prune after free()"
        hess = self.hessian.clone()
        dead = torch.diag(hess) == 0  # inputs that were always zero: nothing to reconstruct
        hess[dead, dead] = 1.0
        weight[:, dead] = 0.0
        damp = self.percdamp * torch.mean(torch.diag(hess))
        hess += damp * torch.eye(hess.shape[0], dtype=hess.dtype, device=hess.device)
        hinv = torch.cholesky_inverse(torch.linalg.cholesky(hess))
        return torch.linalg.cholesky(hinv, upper=True).to(torch.float32)

    def prune(self, sparsity: float, pattern: Pattern) -> torch.Tensor:
        weight = self.layer.weight.detach().clone().float()
        rows, cols = weight.shape
        hinv = self._inverse_cholesky(weight)
        keep = torch.ones_like(weight, dtype=torch.bool)
        step = (
            self.blocksize
            if pattern is None
            else max(pattern.m, self.blocksize // pattern.m * pattern.m)
        )
        for i1 in range(0, cols, step):  # with N:M, blocks hold whole groups
            i2 = min(i1 + step, cols)
            w1 = weight[:, i1:i2].clone()
            h1 = hinv[i1:i2, i1:i2]
            keep1 = torch.ones_like(w1, dtype=torch.bool)
            if pattern is None:
                # cumulative rounding: the layer total is exactly num_pruned(rows * cols)
                k = num_pruned(rows * i2, sparsity) - num_pruned(rows * i1, sparsity)
                score = w1**2 / torch.diag(h1).unsqueeze(0) ** 2
                keep1 = prune_lowest(score.reshape(-1), k, dim=0).reshape(w1.shape)
            err1 = torch.zeros_like(w1)
            for i in range(i2 - i1):
                if pattern is not None and i % pattern.m == 0:
                    keep1[:, i : i + pattern.m] = self._nm_group(w1, h1, i, pattern)
                d = h1[i, i]
                q = w1[:, i] * keep1[:, i]
                err = (w1[:, i] - q) / d
                w1[:, i:] -= err.unsqueeze(1) @ h1[i, i:].unsqueeze(0)
                w1[:, i] = q
                err1[:, i] = err
            weight[:, i1:i2] = w1
            weight[:, i2:] -= err1 @ hinv[i1:i2, i2:]
            keep[:, i1:i2] = keep1
        write_weight_and_mask(self.layer, weight, keep)
        return keep

    @staticmethod
    def _nm_group(w1: torch.Tensor, h1: torch.Tensor, i: int, pattern: NMPattern) -> torch.Tensor:
        """Keep-mask for columns i..i+m of the current (already updated) block weights."""
        group = slice(i, i + pattern.m)
        score = w1[:, group] ** 2 / torch.diag(h1)[group].unsqueeze(0) ** 2
        return nm_keep_mask(score, pattern)

    def free(self) -> None:
        self.hessian = None
