"""prunekit: prune PyTorch networks.

Public names are resolved lazily so that ``import prunekit`` stays cheap and the
CLI starts fast; each lives in the sub-package named in ``_PUBLIC``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it ("module:attr" where the public name differs)
_PUBLIC: dict[str, str] = {
    "profile": "prunekit.metrics.profile",
    "Profile": "prunekit.metrics.profile",
    "benchmark_latency": "prunekit.metrics.latency",
    "LatencyResult": "prunekit.metrics.latency",
    "sparsify": "prunekit.sparse.sparsify",
    "SparsifyResult": "prunekit.sparse.sparsify",
    "strip": "prunekit.sparse.masks",
    "sparsity_report": "prunekit.sparse.report",
    "prune": "prunekit.structured.pruning",
    "PruneResult": "prunekit.structured.pruning",
    "replay_plan": "prunekit.structured.plan",
    "fold_batchnorm": "prunekit.structured.fold",
    "prune_llm": "prunekit.llm.api",
    "prune_hf": "prunekit.llm.hf",
    "prune_checkpoint": "prunekit.llm.streaming",
    "drop_layers": "prunekit.llm.depth",
    "block_influence": "prunekit.llm.depth",
    "drop_experts": "prunekit.llm.experts",
    "expert_usage": "prunekit.llm.experts",
    "embedding_fidelity": "prunekit.llm.hf_fidelity",
    "perplexity": "prunekit.llm.perplexity",
    "finetune": "prunekit.train.finetune",
    "FinetuneConfig": "prunekit.train.finetune",
    "Pruner": "prunekit.train.callbacks",
    "DistillationLoss": "prunekit.train.distill",
    "recalibrate_batchnorm": "prunekit.train.recover",
    "reconstruct": "prunekit.train.recover",
    "evaluate": "prunekit.train.finetune",
    "save": "prunekit.io.checkpoint",
    "load": "prunekit.io.checkpoint",
    "load_manifest": "prunekit.io.checkpoint",
    "export_onnx": "prunekit.io.onnx",
    "compare": "prunekit.metrics.compare",
    "convert_sparse": "prunekit.sparse.convert:convert",
    "to_dense": "prunekit.sparse.convert",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr or name)


def __dir__() -> list[str]:
    return sorted(__all__)
