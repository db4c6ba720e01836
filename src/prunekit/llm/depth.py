"""Depth pruning of transformers: rank layers by block influence and remove whole layers.

Block influence (ShortGPT, Men et al. 2024) is ``1 − cos(x_in, x_out)`` averaged over the
tokens of the calibration data, where ``x_in``/``x_out`` are the hidden states entering and
leaving the block; blocks that barely turn the residual stream are the cheapest to drop.
Unlike :func:`prunekit.structured.prune_depth` (which swaps a block for an identity), the
layers here are taken out of the ``ModuleList``, and a Hugging Face config is updated
(``num_hidden_layers``, per-layer lists such as ``layer_types``; each kept layer's
``layer_idx`` is renumbered for the KV cache) so ``save_pretrained`` → ``from_pretrained``
rebuilds the same model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.llm.api import as_batches
from prunekit.llm.blocks import block_outputs, find_blocks
from prunekit.llm.hf_families import check_reloadable
from prunekit.llm.hf_refit import capture_inputs

__all__ = ["DroppedLayers", "block_influence", "drop_layers"]

# config fields holding one entry per layer (sliced along with the layers)
PER_LAYER_FIELDS = ("layer_types", "no_rope_layers")

Calib = torch.Tensor | Sequence[torch.Tensor | Mapping[str, torch.Tensor]]


def _batches(calib: Calib) -> list[torch.Tensor | Mapping[str, torch.Tensor]]:
    if isinstance(calib, torch.Tensor) or all(isinstance(b, torch.Tensor) for b in calib):
        return list(as_batches(calib))  # type: ignore[arg-type]
    if not calib:
        raise ConfigError("calib is empty; pass token ids (n, seqlen) or input dicts")
    return list(calib)


def _token_mask(batch: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    return None if mask is None else mask.reshape(-1).bool()


def block_influence(model: nn.Module, calib: Calib, *, blocks: str | None = None) -> list[float]:
    """``1 − cos(input, output)`` of every block, averaged over calibration tokens (padding
    excluded where a batch dict carries an ``attention_mask``), with each block fed the
    (dense) outputs of the one before."""
    batches = _batches(calib)
    masks = [_token_mask(b) for b in batches]
    _, layers = find_blocks(model, blocks)
    was_training = model.training
    model.eval()
    try:
        inputs = capture_inputs(model, layers, batches)
        scores = []
        for block in layers:
            outputs = block_outputs(block, inputs)
            cosines = [_masked(F.cosine_similarity(o.float(), i.hidden.float(), dim=-1), m)
                       for i, o, m in zip(inputs, outputs, masks, strict=True)]
            scores.append(float(1 - torch.cat(cosines).mean()))
            inputs = [i.with_hidden(o) for i, o in zip(inputs, outputs, strict=True)]
    finally:
        model.train(was_training)
    return scores


def _masked(cosine: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    flat = cosine.reshape(-1)
    return flat if mask is None or mask.numel() != flat.numel() else flat[mask.to(flat.device)]


@dataclass(frozen=True)
class DroppedLayers:
    """The shallower model, the indices removed (of the original layers) and, when layers
    were chosen by influence, every layer's score."""

    model: nn.Module
    removed: tuple[int, ...]
    influence: tuple[float, ...] | None = None


def _chosen(layers: int | Sequence[int], count: int,
            influence: list[float] | None) -> tuple[int, ...]:
    if isinstance(layers, bool):
        raise TypeError(f"layers must be an int count or a list of layer indices, got {layers!r}")
    if isinstance(layers, int):
        if not 0 < layers < count:
            raise ConfigError(f"layers={layers}: can remove between 1 and {count - 1} of the "
                              f"model's {count} layers")
        assert influence is not None  # computed by the caller for a count
        order = sorted(range(count), key=lambda i: influence[i])
        return tuple(sorted(order[:layers]))
    indices = list(layers)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise TypeError(f"layers must be ints, got {indices!r}")
    bad = [i for i in indices if not -count <= i < count]
    if bad or not indices:
        raise ConfigError(f"layers={indices!r}: indices must lie in [0, {count}) and the list "
                          f"must not be empty")
    chosen = tuple(sorted({i % count for i in indices}))
    if len(chosen) != len(indices) or len(chosen) >= count:
        raise ConfigError(f"layers={indices!r}: list each layer once and keep at least one of "
                          f"the {count} layers")
    return chosen


def _renumber(block: nn.Module, index: int) -> None:
    for module in block.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            setattr(module, "layer_idx", index)  # noqa: B010 (an HF attribute, untyped)


def _update_config(model: nn.Module, keep: list[int], count: int) -> dict[str, Any]:
    """Set the layer count and slice per-layer fields; returns the old values."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_hidden_layers"):
        return {}
    old: dict[str, Any] = {"num_hidden_layers": config.num_hidden_layers}
    config.num_hidden_layers = len(keep)
    for name in PER_LAYER_FIELDS:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == count:
            old[name] = values
            setattr(config, name, type(values)(values[i] for i in keep))
    return old


def drop_layers(model: nn.Module, layers: int | Sequence[int], *, calib: Calib | None = None,
                blocks: str | None = None, inplace: bool = False) -> DroppedLayers:
    """Remove whole layers: the ``layers`` least influential ones (an int; needs ``calib``)
    or the given indices. Works on a copy unless ``inplace=True``; a Hugging Face model's
    config is updated and checked to describe the remaining weights."""
    path, found = find_blocks(model, blocks)
    count = len(found)
    influence = None
    if isinstance(layers, int) and not isinstance(layers, bool):
        if calib is None:
            raise ConfigError(f"layers={layers} picks layers by block influence, which needs "
                              f"calib=<token ids (n, seqlen)>; or pass layer indices, "
                              f"e.g. layers=[{count - 2}]")
        influence = block_influence(model, calib, blocks=path)
    removed = _chosen(layers, count, influence)
    keep = [i for i in range(count) if i not in removed]
    pruned = model if inplace else copy.deepcopy(model)
    _, old = find_blocks(pruned, path)
    kept = nn.ModuleList(old[i] for i in keep)
    for index, block in enumerate(kept):
        _renumber(block, index)
    parent, _, name = path.rpartition(".")
    owner = pruned.get_submodule(parent) if parent else pruned
    setattr(owner, name, kept)
    old_config = _update_config(pruned, keep, count)
    if hasattr(type(pruned), "from_pretrained") and hasattr(pruned, "config"):
        try:
            check_reloadable(pruned)
        except ConfigError:
            if inplace:  # put the user's model back as it was
                for index, block in enumerate(old):
                    _renumber(block, index)
                setattr(owner, name, old)
                for key, value in old_config.items():
                    setattr(pruned.config, key, value)
            raise
    return DroppedLayers(pruned, removed, None if influence is None else tuple(influence))
