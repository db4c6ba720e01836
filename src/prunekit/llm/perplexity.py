"""Sliding-window perplexity of a causal language model.

Windows of ``seqlen`` tokens start every ``stride`` tokens; each token is scored at most
once, in the first window where it is a target, with as much left context as that window
gives (the Hugging Face "perplexity of fixed-length models" recipe). A window's first
token has no context there, so with ``stride == seqlen`` (disjoint windows, as in the
SparseGPT/Wanda evaluations) it is not scored. Works with models
returning ``.logits`` (Hugging Face), a tuple whose first item is the logits, or a tensor.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(
        f"model returned {type(output).__name__}; perplexity needs logits: a tensor, an object "
        "with .logits, or a tuple whose first item is the logits"
    )


def perplexity(
    model: nn.Module, token_ids: torch.Tensor, *, seqlen: int, stride: int | None = None
) -> float:
    """exp(mean next-token cross-entropy) over ``token_ids`` (shape (L,) or (1, L))."""
    stride = seqlen if stride is None else stride
    if not 1 <= stride <= seqlen or seqlen < 2:
        raise ConfigError(
            f"need seqlen >= 2 and 1 <= stride <= seqlen, got seqlen={seqlen}, stride={stride}; "
            "stride=seqlen gives disjoint windows"
        )
    ids = token_ids.reshape(-1).long()
    if ids.numel() < 2:
        raise ConfigError(f"token_ids has {ids.numel()} tokens; perplexity needs at least 2")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, count, scored_until = 0.0, 0, 1  # token 0 has no context and is never a target
    try:
        with torch.no_grad():
            for begin in range(0, ids.numel() - 1, stride):
                end = min(begin + seqlen, ids.numel())
                window = ids[begin:end].unsqueeze(0).to(device)
                logits = _logits(model(window))[0, :-1].float()
                targets = window[0, 1:]
                # first target not scored by an earlier window (targets are window[1:])
                first = max(scored_until - begin - 1, 0)
                losses = F.cross_entropy(logits[first:], targets[first:], reduction="sum")
                nll += float(losses)
                count += targets.numel() - first
                scored_until = end
                if end == ids.numel():
                    break
    finally:
        model.train(was_training)
    return math.exp(nll / count)
