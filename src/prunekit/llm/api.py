"""``prune_llm``: one-shot post-training pruning of a transformer, block by block."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from prunekit.errors import ConfigError, NothingToPruneError, check_fraction
from prunekit.llm.blocks import BlockInput, capture_block_inputs, find_blocks
from prunekit.llm.owl import OWLConfig, outlier_ratio, owl_sparsities
from prunekit.llm.reconstruct import ReconstructConfig
from prunekit.llm.sequential import Around, Layers, prunable_layers, run_sequential
from prunekit.llm.solvers import (
    LayerSolver,
    Pattern,
    SolverFactory,
    WandaSolver,
    get_solver,
    parse_pattern,
)
from prunekit.llm.solvers.base import check_layer, weight_storage
from prunekit.sparse.masks import apply_mask, get_mask, remove_mask

Method = Literal["wanda", "sparsegpt", "magnitude"]


@dataclass
class LLMPruneResult:
    """What ``prune_llm`` did: the per-block targets and the sparsity each layer ended with."""

    method: str
    pattern: str
    target_sparsity: float
    block_sparsity: list[float]
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    layer_numel: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all pruned weights."""
        total = sum(self.layer_numel.values())
        zeros = sum(self.layer_sparsity[k] * n for k, n in self.layer_numel.items())
        return zeros / total if total else 0.0


def as_batches(calib: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Calibration as a list of (1, seqlen)-style batches: a 2-D tensor is split by rows."""
    if isinstance(calib, torch.Tensor):
        batches = list(calib.split(1)) if calib.dim() >= 2 else [calib.unsqueeze(0)]
    else:
        batches = [b if b.dim() >= 2 else b.unsqueeze(0) for b in calib]
    if not batches or any(b.numel() == 0 for b in batches):
        raise ConfigError(
            "calib is empty; pass token ids of shape (nsamples, seqlen) or a list of "
            "(1, seqlen) tensors, e.g. from prunekit.llm.calibration_batches(...)"
        )
    return batches


class _Journal:
    """Originals of the layers touched so far, so a failed run leaves the model as it was."""

    def __init__(self) -> None:
        self.saved: list[tuple[nn.Linear, torch.Tensor, torch.Tensor | None]] = []

    def record(self, layer: nn.Linear) -> None:
        mask = get_mask(layer, "weight")
        weight = weight_storage(layer).detach().clone()
        self.saved.append((layer, weight, None if mask is None else mask.clone()))

    def rollback(self) -> None:
        for layer, weight, mask in reversed(self.saved):
            if mask is None:
                remove_mask(layer, "weight", bake=False)
            else:
                apply_mask(layer, "weight", mask)
            with torch.no_grad():
                weight_storage(layer).copy_(weight)


@dataclass(frozen=True)
class PruneOptions:
    """``prune_llm``'s options once validated; the streaming ``prune_checkpoint`` shares them."""

    method: str
    pattern: str
    sparsity: float
    solver: SolverFactory
    nm: Pattern
    owl: OWLConfig | None
    reconstruct: ReconstructConfig | None
    true_sequential: bool


def resolve_options(
    method: str,
    sparsity: float,
    pattern: str,
    owl: bool | OWLConfig,
    true_sequential: bool,
    reconstruct: bool | ReconstructConfig,
) -> PruneOptions:
    """Check the option values (ConfigError naming the bad one) and fill in the defaults."""
    factory = get_solver(method)
    nm = parse_pattern(pattern)
    sparsity = check_fraction("sparsity", sparsity)
    if nm is not None and abs(sparsity - nm.sparsity) > 1e-9:
        raise ConfigError(
            f"pattern={pattern!r} fixes the sparsity at {nm.sparsity:g}, but "
            f"sparsity={sparsity!r}; pass sparsity={nm.sparsity:g} or pattern='unstructured'"
        )
    owl_cfg = OWLConfig() if owl is True else (owl or None)
    rec_cfg = ReconstructConfig() if reconstruct is True else (reconstruct or None)
    if owl_cfg is not None and nm is not None:
        raise ConfigError(f"owl=True needs pattern='unstructured', got pattern={pattern!r}")
    return PruneOptions(
        str(method), pattern, sparsity, factory, nm, owl_cfg, rec_cfg, true_sequential
    )


def check_blocks(path: str, block_list: nn.ModuleList, opts: PruneOptions) -> list[Layers]:
    """Each block's prunable layers, after checking every one against the options."""
    layers = [prunable_layers(block) for block in block_list]
    for i, block_layers in enumerate(layers):
        for name, layer in block_layers.items():
            check_layer(f"{path}.{i}.{name}", layer, opts.sparsity, opts.nm)
    if not any(layers):
        raise NothingToPruneError(f"blocks={path!r} holds no nn.Linear layers to prune")
    return layers


def record_layers(result: LLMPruneResult, path: str, index: int, layers: Layers) -> None:
    """Store the sparsity and size of block ``index``'s pruned weights in ``result``."""
    for name, layer in layers.items():
        key = f"{path}.{index}.{name}.weight"
        result.layer_sparsity[key] = float((layer.weight == 0).float().mean())
        result.layer_numel[key] = layer.weight.numel()


def prune_blocks(
    capture: Callable[[], list[BlockInput]],
    block_list: nn.ModuleList,
    opts: PruneOptions,
    *,
    before_prune: Callable[[int, str], None] | None = None,
    around: Around | None = None,
    around_stats: Around | None = None,
) -> list[float]:
    """The pruning passes over ``block_list``; returns each block's target sparsity.

    ``capture()`` gives block 0's inputs (called once per pass: twice with OWL, whose dense
    Wanda pass runs inside ``around_stats``). ``before_prune(block_index, layer_name)`` runs
    before a layer's weights change; every block's pruning turn runs inside ``around``.
    """
    targets = [opts.sparsity] * len(block_list)
    if opts.owl is not None:
        owl_cfg = opts.owl
        ratios: list[float] = [0.0] * len(block_list)

        def record(index: int, solvers: dict[str, LayerSolver]) -> None:
            count, total = outlier_ratio(solvers, owl_cfg.m)
            ratios[index] = count / max(total, 1)

        run_sequential(
            block_list,
            capture(),
            WandaSolver,
            record,
            true_sequential=False,
            around=around_stats,
        )
        targets = owl_sparsities(ratios, opts.sparsity, owl_cfg.lam)

    def prune(index: int, solvers: dict[str, LayerSolver]) -> None:
        for name, solver in solvers.items():
            if before_prune is not None:
                before_prune(index, name)
            solver.prune(targets[index], opts.nm)

    run_sequential(
        block_list,
        capture(),
        opts.solver,
        prune,
        true_sequential=opts.true_sequential,
        reconstruct=opts.reconstruct,
        around=around,
    )
    return targets


def prune_llm(
    model: nn.Module,
    calib: torch.Tensor | Sequence[torch.Tensor],
    *,
    method: Method | str = "wanda",
    sparsity: float = 0.5,
    pattern: str = "unstructured",
    owl: bool | OWLConfig = False,
    true_sequential: bool = True,
    blocks: str | None = None,
    reconstruct: bool | ReconstructConfig = False,
) -> LLMPruneResult:
    """Prune every ``nn.Linear`` inside the model's repeated blocks, in place, with masks.

    ``calib``: token-id batches the model accepts as ``model(batch)``. ``pattern='2:4'``
    fixes the sparsity at 1 − N/M. ``owl`` spreads the sparsity over blocks by their
    activation outliers (mean stays ``sparsity``). ``reconstruct`` then fits each pruned
    block's kept weights to the dense block's outputs (masks fixed). Layers outside the
    blocks (embeddings, LM head) are untouched. On any error the model is restored before
    re-raising (a copy of each pruned weight is kept until the call returns).
    """
    start = time.perf_counter()
    opts = resolve_options(method, sparsity, pattern, owl, true_sequential, reconstruct)
    batches = as_batches(calib)
    path, block_list = find_blocks(model, blocks)
    layers = check_blocks(path, block_list, opts)

    was_training = model.training
    model.eval()
    journal = _Journal()
    try:
        targets = prune_blocks(
            lambda: capture_block_inputs(model, block_list, batches),
            block_list,
            opts,
            before_prune=lambda index, name: journal.record(layers[index][name]),
        )
    except BaseException:
        journal.rollback()
        raise
    finally:
        model.train(was_training)

    result = LLMPruneResult(
        opts.method, pattern, opts.sparsity, targets, seconds=time.perf_counter() - start
    )
    for i, block_layers in enumerate(layers):
        record_layers(result, path, i, block_layers)
    return result
