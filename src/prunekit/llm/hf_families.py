"""How each Hugging Face model family sizes its layers from its config.

A :class:`HFFamily` names, inside one decoder/encoder block, the query and key projections
(their output widths give the head counts) and the FFN up projection (its output width is
the FFN width), and which config fields hold those sizes. A family whose attention derives
the head size from ``hidden_size / num_attention_heads`` (BERT, GPT-2) cannot express fewer
heads at the same hidden size, so ``heads_key`` is None there. GPT-2's ``c_attn`` is one
fused q/k/v projection (``parts=3``): its width is three times the heads' width. No
per-layer sizes fit in any of these configs: every layer must end up with the same widths
to reload.

``transformers`` is never imported here; the model and its config are plain objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError

__all__ = ["FAMILIES", "HFFamily", "LayerWidths", "apply_config", "check_reloadable", "family_of",
           "head_dim", "layer_widths", "updated_config"]


@dataclass(frozen=True)
class HFFamily:
    """Paths inside a block (``query``/``key`` None: head pruning not supported) and the
    config fields that size them (``heads_key`` None: the config cannot express it);
    ``parts`` is how many of q/k/v the query projection holds (3 for a fused ``c_attn``)."""

    query: str | None
    key: str | None
    ffn: str
    heads_key: str | None
    kv_key: str | None
    ffn_key: str
    why_no_heads: str = ""
    parts: int = 1


_LLAMA = HFFamily("self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj",
                  "num_attention_heads", "num_key_value_heads", "intermediate_size")
_BERT = HFFamily("attention.self.query", "attention.self.key", "intermediate.dense",
                 None, None, "intermediate_size",
                 why_no_heads="BERT's attention sizes a head as hidden_size / "
                              "num_attention_heads, so fewer heads at the same hidden size "
                              "cannot be written in BertConfig")
_GPT2 = HFFamily("attn.c_attn", "attn.c_attn", "mlp.c_fc", None, None, "n_inner",
                 why_no_heads="GPT-2's attention sizes a head as hidden_size / n_head "
                              "(head_dim = n_embd // n_head), so fewer heads at the same hidden "
                              "size cannot be written in GPT2Config and from_pretrained cannot "
                              "reload it",
                 parts=3)

FAMILIES: dict[str, HFFamily] = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "bert": _BERT, "gpt2": _GPT2}


def family_of(model: nn.Module) -> HFFamily:
    """The family of a ``transformers`` model, by ``config.model_type``."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        raise ConfigError(
            f"model: {type(model).__name__} (config.model_type={kind!r}) is not a supported "
            f"Hugging Face family; supported: {', '.join(sorted(FAMILIES))}. For other models "
            f"use prunekit.structured.prune and save with prunekit.save"
        )
    return FAMILIES[kind]


def _width(module: nn.Module) -> int:
    """Output width of a Linear or a transformers Conv1D (weight [in, out], ``nf``)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    nf = getattr(module, "nf", None)
    if isinstance(nf, int):
        return nf
    raise ConfigError(f"cannot read the output width of {type(module).__name__}; expected "
                      f"nn.Linear or transformers Conv1D")


def head_dim(config: Any) -> int:
    """The per-head size the family's attention uses."""
    explicit = getattr(config, "head_dim", None)
    if isinstance(explicit, int) and explicit > 0:
        return explicit
    return int(config.hidden_size // config.num_attention_heads)


@dataclass(frozen=True)
class LayerWidths:
    """Per-layer query heads, key/value heads (None where not measured) and FFN width."""

    heads: tuple[int, ...] | None
    kv_heads: tuple[int, ...] | None
    ffn: tuple[int, ...]


def layer_widths(blocks: nn.ModuleList, family: HFFamily, config: Any) -> LayerWidths:
    """Measure every block's widths from its weights."""
    ffn = tuple(_width(b.get_submodule(family.ffn)) for b in blocks)
    if family.query is None or family.key is None:
        return LayerWidths(None, None, ffn)
    size = head_dim(config)
    heads = tuple(_width(b.get_submodule(family.query)) // (family.parts * size) for b in blocks)
    kv = tuple(_width(b.get_submodule(family.key)) // (family.parts * size) for b in blocks)
    return LayerWidths(heads, kv, ffn)


def _uniform(name: str, values: tuple[int, ...], problems: list[str]) -> int | None:
    if len(set(values)) != 1:
        problems.append(
            f"per-layer {name} differ ({list(values)}) and Hugging Face configs hold one value "
            f"for all layers; pass uniform=True, or require_reloadable=False and save with "
            f"prunekit.save(result, dir) / prunekit.load(dir, base_model)"
        )
        return None
    return values[0]


def updated_config(family: HFFamily, before: LayerWidths,
                   after: LayerWidths) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """The config fields to change, {field: (old, new)}, and why the rest of the new widths
    cannot be written into this family's config (empty when everything fits)."""
    changes: dict[str, tuple[int, int]] = {}
    problems: list[str] = []
    pairs: list[tuple[str | None, str, tuple[int, ...] | None, tuple[int, ...] | None]] = [
        (family.ffn_key, "FFN widths", before.ffn, after.ffn),
        (family.heads_key, "head counts", before.heads, after.heads),
        (family.kv_key, "key/value head counts", before.kv_heads, after.kv_heads),
    ]
    for key, name, old, new in pairs:
        if old is None or new is None or old == new:
            continue
        if key is None:
            if family.why_no_heads not in problems:
                problems.append(family.why_no_heads)
            continue
        value = _uniform(name, new, problems)
        if value is not None:
            changes[key] = (old[0], value)
    return changes, problems


def apply_config(config: Any, changes: Mapping[str, tuple[int, int]]) -> None:
    """Write the new sizes; the head size is pinned first so it no longer follows the
    (now smaller) head count."""
    if any(key in changes for key in ("num_attention_heads", "num_key_value_heads")):
        config.head_dim = head_dim(config)
    for key, (_, new) in changes.items():
        setattr(config, key, new)


def check_reloadable(model: nn.Module) -> None:
    """Build the model's class from its config on the meta device and compare every
    parameter's shape: ConfigError naming the first mismatches if the config does not
    describe the weights (``from_pretrained`` would fail or mis-load)."""
    with torch.device("meta"):
        fresh = type(model)(model.config)
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bad = [f"{k}: config gives {want.get(k)}, weights are {have.get(k)}"
           for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
    if bad:
        raise ConfigError(
            f"the updated config does not describe the pruned weights ({len(bad)} tensors, "
            f"e.g. {'; '.join(bad[:2])}); from_pretrained would not reload this model. Save "
            f"it with prunekit.save(result, dir) instead, or report the model family"
        )
