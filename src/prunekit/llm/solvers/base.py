"""The layer-wise solver protocol and the small helpers every solver shares.

A solver is built for one ``nn.Linear``; the sequential driver feeds it the layer's
calibration inputs with ``add_batch(inp, out)``, then calls ``prune(sparsity, pattern)``
once (the solver writes any weight update and applies the keep-mask) and ``free()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

import torch
from torch import nn

from prunekit.errors import ConfigError, check_fraction
from prunekit.sparse.masks import apply_mask, get_mask


@dataclass(frozen=True)
class NMPattern:
    """Keep ``n`` of every ``m`` consecutive input weights in each output row (2:4 keeps 2 of 4)."""

    n: int
    m: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m


Pattern = NMPattern | None  # None = unstructured


class LayerSolver(Protocol):
    """What the sequential driver needs from a per-layer pruning method."""

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None:
        """Accumulate statistics from one forward call: ``inp`` (..., in), ``out`` (..., out)."""

    def prune(self, sparsity: float, pattern: Pattern) -> torch.Tensor:
        """Choose the keep-mask (and update kept weights if the method does); return the mask."""

    def free(self) -> None:
        """Drop the accumulated statistics."""


def parse_pattern(pattern: str) -> Pattern:
    """``"unstructured"`` → None; ``"N:M"`` → NMPattern(N, M) with 0 < N < M."""
    if pattern == "unstructured":
        return None
    n_str, sep, m_str = str(pattern).partition(":")
    if sep and n_str.isdigit() and m_str.isdigit() and 0 < int(n_str) < int(m_str):
        return NMPattern(int(n_str), int(m_str))
    raise ConfigError(
        f"pattern={pattern!r} is not supported; use 'unstructured' or 'N:M' with 0 < N < M "
        "(e.g. '2:4' keeps 2 of every 4 input weights, '4:8')"
    )


def check_layer(name: str, layer: nn.Linear, sparsity: float, pattern: Pattern) -> None:
    """Validate a (layer, sparsity, pattern) triple before anything is modified."""
    check_fraction("sparsity", sparsity)
    if pattern is not None and layer.in_features % pattern.m:
        raise ConfigError(
            f"pattern='{pattern.n}:{pattern.m}' needs the input dimension of every pruned layer "
            f"to be a multiple of {pattern.m}, but {name} has in_features={layer.in_features}; "
            "use pattern='unstructured' or leave this layer out"
        )


def num_pruned(total: int, sparsity: float) -> int:
    """How many of ``total`` entries a sparsity removes (floor, as the reference codes do)."""
    return int(total * sparsity)


def prune_lowest(scores: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Keep-mask removing exactly the ``k`` lowest scores along ``dim`` (ties by index order)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(scores, k, dim=dim, largest=False, sorted=False).indices
        keep.scatter_(dim, idx, False)
    return keep


def nm_keep_mask(scores: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Keep the ``n`` highest of each ``m`` consecutive scores in every row of a 2-D tensor."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // pattern.m, pattern.m)
    return prune_lowest(groups, pattern.m - pattern.n, dim=2).reshape(rows, cols)


def select_mask(
    scores: torch.Tensor, sparsity: float, pattern: Pattern, *, per_row: bool
) -> torch.Tensor:
    """Keep-mask from a score matrix: N:M groups, per output row, or over the whole layer."""
    if pattern is not None:
        return nm_keep_mask(scores, pattern)
    if per_row:
        return prune_lowest(scores, num_pruned(scores.shape[1], sparsity), dim=1)
    flat = prune_lowest(scores.reshape(-1), num_pruned(scores.numel(), sparsity), dim=0)
    return flat.reshape(scores.shape)


def weight_storage(layer: nn.Module) -> torch.Tensor:
    """The tensor holding ``layer.weight``'s raw values: the parametrization's ``original``
    when the weight is masked, else the weight itself."""
    if get_mask(layer, "weight") is not None:
        return cast(torch.Tensor, layer.parametrizations["weight"].original)  # type: ignore[index, union-attr]
    return cast(torch.Tensor, layer.weight)


def write_weight_and_mask(
    layer: nn.Linear, weight: torch.Tensor | None, keep: torch.Tensor
) -> None:
    """Store updated kept weights (if any) and mask ``layer.weight`` with ``keep``.

    A mask the layer already carries is respected: the result keeps only entries both masks keep.
    """
    old = get_mask(layer, "weight")
    if weight is not None:
        target = weight_storage(layer)
        with torch.no_grad():
            target.copy_(weight.to(target.dtype))
    apply_mask(layer, "weight", keep if old is None else keep & old)
