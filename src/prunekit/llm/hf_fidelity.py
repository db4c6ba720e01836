"""Embedding fidelity of a pruned encoder: how closely its sentence embeddings follow the
dense model's.

A sentence embedding is the mean of ``last_hidden_state`` over the attention mask (padding
excluded), L2-normalised — what sentence-transformers' MiniLM models do. Fidelity is the
mean cosine between the dense and the pruned embedding of the same text (1.0: identical
directions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit._inputs import model_device
from prunekit.errors import ConfigError

__all__ = ["embedding_fidelity", "sentence_embeddings"]

Tokenizer = Callable[..., Any]


def _check(texts: Sequence[str], batch_size: int) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not texts:
        raise ConfigError("texts must be a non-empty list of strings, e.g. texts=['a sentence']")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive int, e.g. 32")
    return list(texts)


def sentence_embeddings(model: nn.Module, tokenizer: Tokenizer, texts: Sequence[str], *,
                        batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """(len(texts), hidden) mean-pooled, L2-normalised embeddings, computed in eval mode."""
    texts = _check(texts, batch_size)
    device = model_device(model)
    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt")
                enc = {k: v.to(device) for k, v in enc.items()}
                hidden = getattr(model(**enc), "last_hidden_state", None)
                if not isinstance(hidden, torch.Tensor):
                    raise ConfigError(f"model: {type(model).__name__} returns no "
                                      f"last_hidden_state; pass the encoder (AutoModel), not a "
                                      f"task head")
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                parts.append(F.normalize(pooled.float(), dim=-1))
    finally:
        model.train(was_training)
    return torch.cat(parts)


def embedding_fidelity(dense: nn.Module, pruned: nn.Module, tokenizer: Tokenizer,
                       texts: Sequence[str], *, batch_size: int = 32,
                       max_length: int = 128) -> float:
    """Mean cosine between ``dense``'s and ``pruned``'s sentence embeddings of ``texts``."""
    a = sentence_embeddings(dense, tokenizer, texts, batch_size=batch_size,
                            max_length=max_length)
    b = sentence_embeddings(pruned, tokenizer, texts, batch_size=batch_size,
                            max_length=max_length)
    return float((a * b).sum(-1).mean())
