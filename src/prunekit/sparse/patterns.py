"""Granularities of fine-grained pruning: which elements of a weight are removed together.

A pattern maps element scores to *unit* scores (one per single weight, conv kernel, block
or element of an N:M group) and a unit keep-mask back to an element keep-mask of the
weight's shape. Ranked patterns leave the choice of units to the caller (a sparsity or a
threshold); an N:M pattern chooses by itself, inside each group (``select``).

Layouts, by weight shape ``(d0, d1, *kernel)`` (Linear: ``(out, in)``; ConvNd:
``(out, in/groups, *k)``; ConvTransposeNd: ``(in, out/groups, *k)``):

* ``unstructured``: every weight is a unit.
* ``kernel``: every ``(d0, d1)`` slice ``weight[i, j]`` of a conv weight is a unit (in a
  global ranking, kernels of different sizes compare by their combined score as is). A 2-D
  weight (Linear) has no kernel and is rejected with a ConfigError rather than silently
  treated as 1-element kernels: restrict ``layers`` to convolutions or ignore the layer.
* ``block``: blocks of ``block_shape`` over the 2-D view ``(d0, d1 * prod(kernel))``.
  Edge blocks that do not fill a whole block keep their real elements only; to rank them
  fairly against full blocks their missing elements are padded with the block's mean
  element score before ``criterion.combine``.
* ``"N:M"``: groups of M consecutive weights along dim 1 (Linear: input features;
  ConvNd: input channels, separately for every output channel and kernel position, the
  K order of an NHWC implicit GEMM that 2:4 sparse kernels use). The N highest-scoring
  weights of each group are kept; ties keep the lower index. Sparsity is fixed at 1 - N/M.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from prunekit.errors import ConfigError
from prunekit.importance.base import Criterion


@dataclass(frozen=True)
class PatternOptions:
    """Options that a pattern factory may read (only ``block`` uses one today)."""

    block_shape: tuple[int, int] = (1, 4)


@runtime_checkable
class Pattern(Protocol):
    """Reduce element scores to unit scores; expand a unit keep-mask to the weight."""

    @property
    def name(self) -> str:
        """Registry name, e.g. "block" or "2:4"."""
        ...

    @property
    def fixed_sparsity(self) -> float | None:
        """None: the caller decides how many units go; else the fraction the pattern removes."""
        ...

    def validate(self, tensor: str, shape: torch.Size) -> None:
        """Raise ConfigError, naming ``tensor``, if this pattern cannot tile ``shape``."""
        ...

    def unit_scores(self, scores: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        """One score per unit, from element ``scores`` combined by ``criterion``."""
        ...

    def unit_alive(self, keep: torch.Tensor) -> torch.Tensor:
        """Per unit: True if any of its elements is kept by the element mask ``keep``."""
        ...

    def expand(self, keep_units: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Element keep-mask of ``shape`` from a unit keep-mask."""
        ...

    def select(self, unit_scores: torch.Tensor) -> torch.Tensor | None:
        """The unit keep-mask this pattern chooses by itself, or None to let a ranking decide."""
        ...


class _PerWeightUnits:
    """Patterns whose units are single weights: scores, liveness and masks map one to one."""

    def unit_scores(self, scores: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        return scores

    def unit_alive(self, keep: torch.Tensor) -> torch.Tensor:
        return keep

    def expand(self, keep_units: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return keep_units.reshape(shape)


@dataclass(frozen=True)
class Unstructured(_PerWeightUnits):
    """Single weights."""

    name: str = "unstructured"
    fixed_sparsity: float | None = None

    def validate(self, tensor: str, shape: torch.Size) -> None:
        return None

    def select(self, unit_scores: torch.Tensor) -> torch.Tensor | None:
        return None


@dataclass(frozen=True)
class Kernel:
    """Whole conv kernels ``weight[i, j]`` (sparse connection pruning)."""

    name: str = "kernel"
    fixed_sparsity: float | None = None

    def validate(self, tensor: str, shape: torch.Size) -> None:
        if len(shape) < 3:
            raise ConfigError(
                f"pattern='kernel' prunes whole conv kernels, but {tensor} has shape "
                f"{tuple(shape)} with no kernel dimensions; restrict layers to convolutions "
                f"(layers=(nn.Conv1d, nn.Conv2d, nn.Conv3d)) or add it to ignore"
            )

    def unit_scores(self, scores: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        return criterion.combine(scores.flatten(2), dim=2)

    def unit_alive(self, keep: torch.Tensor) -> torch.Tensor:
        return keep.flatten(2).any(dim=2)

    def expand(self, keep_units: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        view = keep_units.reshape(*keep_units.shape, *([1] * (len(shape) - 2)))
        return view.expand(shape).contiguous()

    def select(self, unit_scores: torch.Tensor) -> torch.Tensor | None:
        return None


@dataclass(frozen=True)
class Block:
    """Blocks of ``shape`` (rows, cols) over the 2-D view ``(d0, d1 * prod(kernel))``."""

    shape: tuple[int, int] = (1, 4)
    name: str = "block"
    fixed_sparsity: float | None = None

    def validate(self, tensor: str, shape: torch.Size) -> None:
        if len(shape) < 2:
            raise ConfigError(
                f"pattern='block' needs a weight with at least 2 dimensions, but {tensor} has "
                f"shape {tuple(shape)}; use pattern='unstructured' or add it to ignore"
            )

    def _blocks(self, matrix: torch.Tensor, fill: float | bool) -> torch.Tensor:
        """(rows/bh, cols/bw, bh*bw) blocks of a 2-D tensor padded with ``fill``."""
        bh, bw = self.shape
        rows, cols = matrix.shape
        pad_r, pad_c = -rows % bh, -cols % bw
        if pad_r or pad_c:
            padded = matrix.new_full((rows + pad_r, cols + pad_c), fill)
            padded[:rows, :cols] = matrix
            matrix = padded
        r, c = matrix.shape
        return matrix.reshape(r // bh, bh, c // bw, bw).permute(0, 2, 1, 3).reshape(
            r // bh, c // bw, bh * bw
        )

    def unit_scores(self, scores: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        blocks = self._blocks(scores.reshape(scores.shape[0], -1), math.nan)
        # missing elements of edge blocks take the block's mean element score
        means = blocks.nanmean(dim=2, keepdim=True).expand_as(blocks)
        blocks = torch.where(blocks.isnan(), means, blocks)
        return criterion.combine(blocks, dim=2)

    def unit_alive(self, keep: torch.Tensor) -> torch.Tensor:
        return self._blocks(keep.reshape(keep.shape[0], -1), False).any(dim=2)

    def expand(self, keep_units: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        bh, bw = self.shape
        rows, cols = shape[0], math.prod(shape[1:])
        full = keep_units.repeat_interleave(bh, dim=0).repeat_interleave(bw, dim=1)
        return full[:rows, :cols].reshape(shape).contiguous()

    def select(self, unit_scores: torch.Tensor) -> torch.Tensor | None:
        return None


@dataclass(frozen=True)
class NofM(_PerWeightUnits):
    """Keep the N highest-scoring of every M consecutive weights along dim 1."""

    n: int
    m: int

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def fixed_sparsity(self) -> float | None:
        return 1.0 - self.n / self.m

    def validate(self, tensor: str, shape: torch.Size) -> None:
        if len(shape) < 2:
            raise ConfigError(
                f"pattern={self.name!r} groups weights along dim 1, but {tensor} has shape "
                f"{tuple(shape)}; add it to ignore"
            )
        if shape[1] % self.m:
            raise ConfigError(
                f"pattern={self.name!r} needs dim 1 of {tensor} (size {shape[1]}, shape "
                f"{tuple(shape)}) to be divisible by M={self.m}; add the layer to ignore or "
                f"choose an M that divides {shape[1]}"
            )

    def select(self, unit_scores: torch.Tensor) -> torch.Tensor | None:
        moved = unit_scores.movedim(1, -1)
        groups = moved.reshape(-1, self.m)
        # stable descending sort: among equal scores the lower index is kept
        order = torch.argsort(groups, dim=1, descending=True, stable=True)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, order[:, : self.n], True)
        return keep.reshape(moved.shape).movedim(-1, 1).contiguous()


PatternFactory = Callable[[PatternOptions], Pattern]

_PATTERNS: dict[str, PatternFactory] = {}
_N_OF_M = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def register_pattern(name: str, factory: PatternFactory, *, replace: bool = False) -> None:
    """Register ``factory`` (options → Pattern) under ``name``."""
    if name in _PATTERNS and not replace:
        raise ConfigError(
            f"pattern name {name!r} is already registered; pick another or pass replace=True"
        )
    _PATTERNS[name] = factory


def pattern_names() -> list[str]:
    """Registered names plus the N:M form."""
    return [*_PATTERNS, "N:M (e.g. 2:4, 4:8)"]


def check_block_shape(block_shape: object) -> tuple[int, int]:
    """``block_shape`` as a (rows, cols) pair of positive ints, or a ConfigError."""
    ok = (
        isinstance(block_shape, (tuple, list))
        and len(block_shape) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in block_shape)
    )
    if not ok:
        raise ConfigError(
            f"block_shape={block_shape!r} must be a pair of positive ints (rows, cols), "
            f"e.g. block_shape=(1, 4) or (4, 4)"
        )
    return (int(block_shape[0]), int(block_shape[1]))  # type: ignore[index]


def parse_n_of_m(spec: str) -> NofM | None:
    """``NofM`` for a string such as "2:4"; None if ``spec`` is not of the N:M form."""
    found = _N_OF_M.match(spec)
    if found is None:
        return None
    n, m = int(found.group(1)), int(found.group(2))
    if not 0 < n < m:
        raise ConfigError(
            f"pattern={spec!r} needs 0 < N < M (keep N of every M weights), e.g. '2:4' or '4:8'"
        )
    return NofM(n, m)


def get_pattern(spec: str | Pattern, options: PatternOptions | None = None) -> Pattern:
    """The pattern named ``spec`` ("unstructured", "kernel", "block", "2:4", ...)."""
    if isinstance(spec, Pattern) and not isinstance(spec, str):
        return spec
    opts = PatternOptions() if options is None else options
    if isinstance(spec, str):
        factory = _PATTERNS.get(spec)
        if factory is not None:
            return factory(opts)
        n_of_m = parse_n_of_m(spec)
        if n_of_m is not None:
            return n_of_m
    raise ConfigError(
        f"pattern={spec!r} is not a known pattern; choose one of: {', '.join(pattern_names())}"
    )


register_pattern("unstructured", lambda opts: Unstructured())
register_pattern("kernel", lambda opts: Kernel())
register_pattern("block", lambda opts: Block(check_block_shape(opts.block_shape)))
