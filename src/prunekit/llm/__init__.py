"""Post-training pruning of transformers / LLMs: Wanda, SparseGPT, magnitude, OWL."""

from __future__ import annotations

from prunekit.llm.api import LLMPruneResult, prune_llm
from prunekit.llm.blocks import BlockInput, capture_block_inputs, find_blocks
from prunekit.llm.calibration import calibration_batches, default_texts
from prunekit.llm.owl import OWLConfig, owl_sparsities
from prunekit.llm.perplexity import perplexity
from prunekit.llm.sequential import run_sequential
from prunekit.llm.solvers import SOLVERS, LayerSolver, register_solver
from prunekit.llm.streaming import prune_checkpoint

__all__ = [
    "SOLVERS",
    "BlockInput",
    "LLMPruneResult",
    "LayerSolver",
    "OWLConfig",
    "calibration_batches",
    "capture_block_inputs",
    "default_texts",
    "find_blocks",
    "owl_sparsities",
    "perplexity",
    "prune_checkpoint",
    "prune_llm",
    "register_solver",
    "run_sequential",
]
