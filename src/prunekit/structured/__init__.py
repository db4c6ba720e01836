"""Structured pruning: physically remove channels, neurons and hidden units.

Public names resolve lazily (``prune``, ``PruneResult``, ``replay_plan``, ``analyze``,
``prune_depth``, ``register_adapter``, ``PrunedMultiheadAttention``) so that lower layers
can import the adapter seam without pulling in the whole pipeline.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC: dict[str, str] = {
    "prune": "prunekit.structured.pruning",
    "PruneResult": "prunekit.structured.pruning",
    "analyze": "prunekit.structured.pruning",
    "Analysis": "prunekit.structured.pruning",
    "replay_plan": "prunekit.structured.plan",
    "prune_depth": "prunekit.structured.depth",
    "DepthResult": "prunekit.structured.depth",
    "block_scores": "prunekit.structured.depth",
    "apply_plan": "prunekit.structured.plan",
    "register_adapter": "prunekit.structured.adapters",
    "find_adapter": "prunekit.structured.adapters",
    "WeightView": "prunekit.structured.adapters",
    "PrunedMultiheadAttention": "prunekit.structured.mha",
    "fold_batchnorm": "prunekit.structured.fold",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'prunekit.structured' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
