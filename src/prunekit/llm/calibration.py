"""Calibration batches: ``nsamples`` random windows of ``seqlen`` tokens, seeded.

The source is a tensor of token ids, or texts plus a tokenizer-like callable (a Hugging
Face tokenizer, or any ``str -> list[int]``). Texts are joined with blank lines and
tokenized once, as the SparseGPT/Wanda references do with their corpora. Without a
source, ``default_texts()`` reads Debian's ``fortunes`` package when it is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from prunekit.errors import ConfigError, DataError

FORTUNES_DIR = Path("/usr/share/games/fortunes")

Tokenizer = Callable[[str], Any]


def default_texts(directory: str | Path = FORTUNES_DIR) -> list[str]:
    """The fortunes in ``directory``'s %-separated text files (Debian package ``fortunes``)."""
    root = Path(directory)
    found = root.glob("*") if root.is_dir() else []
    files = sorted(p for p in found if p.is_file() and not p.suffix)  # skip the .dat indexes
    texts = [
        part.strip()
        for path in files
        for part in path.read_text(encoding="utf-8", errors="replace").split("\n%\n")
        if part.strip()
    ]
    if not texts:
        raise DataError(
            f"no default calibration text: {root} holds no fortune files (Debian package "
            "'fortunes'); pass your own text, e.g. calibration_batches(texts, tokenizer=tok)"
        )
    return texts


def tokenize(texts: Sequence[str], tokenizer: Tokenizer) -> torch.Tensor:
    """One 1-D LongTensor of the ids of ``"\\n\\n".join(texts)``."""
    encoded = tokenizer("\n\n".join(texts))
    if isinstance(encoded, Mapping):
        encoded = encoded["input_ids"]
    return torch.as_tensor(encoded, dtype=torch.long).reshape(-1)


def calibration_batches(
    source: torch.Tensor | Sequence[str],
    *,
    tokenizer: Tokenizer | None = None,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
) -> list[torch.Tensor]:
    """``nsamples`` tensors of shape (1, ``seqlen``) cut at seeded random offsets of the source."""
    if isinstance(nsamples, bool) or not isinstance(nsamples, int) or nsamples < 1:
        raise ConfigError(f"nsamples={nsamples!r} must be a positive int (e.g. 128)")
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 1:
        raise ConfigError(f"seqlen={seqlen!r} must be a positive int (e.g. 2048)")
    if isinstance(source, torch.Tensor):
        ids = source.reshape(-1).long()
    else:
        if tokenizer is None:
            raise ConfigError(
                "tokenizer=None with text input; pass tokenizer=<callable str -> token ids>, "
                "e.g. the model's Hugging Face tokenizer"
            )
        ids = tokenize(list(source), tokenizer)
    if ids.numel() < seqlen:
        raise DataError(
            f"the calibration source has {ids.numel()} tokens, fewer than seqlen={seqlen}; "
            "pass more text or a smaller seqlen"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (nsamples,), generator=gen)
    return [ids[s : s + seqlen].unsqueeze(0) for s in starts.tolist()]
