"""Embedding fidelity with a tiny random BERT and a word-level tokenizer built on the spot
(no downloads): identical models score 1, pruned ones less, padding does not count."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.llm.hf import prune_hf
from prunekit.llm.hf_fidelity import embedding_fidelity, sentence_embeddings

transformers = pytest.importorskip("transformers")

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "fast", "slow", "big", "small",
         "red", "blue"]
TEXTS = ["the cat sat on the mat", "a dog ran fast", "the big red dog sat",
         "a small blue cat ran slow on a big mat"]


@pytest.fixture
def tokenizer() -> Any:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return transformers.BertTokenizer(vocab={t: i for i, t in enumerate(tokens)})


@pytest.fixture
def bert() -> Any:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32, initializer_range=0.2)
    return transformers.BertModel(config).eval()


def test_identical_models_score_one_and_pruned_less(bert: Any, tokenizer: Any) -> None:
    assert embedding_fidelity(bert, bert, tokenizer, TEXTS) == pytest.approx(1.0, abs=1e-6)
    inputs = dict(tokenizer(TEXTS[:2], padding=True, return_tensors="pt"))
    pruned = prune_hf(bert, inputs, ffn=0.75).model
    score = embedding_fidelity(bert, pruned, tokenizer, TEXTS)
    assert 0.0 < score < 1.0 - 1e-4


def test_embeddings_are_unit_length_and_ignore_padding(bert: Any, tokenizer: Any) -> None:
    together = sentence_embeddings(bert, tokenizer, TEXTS, batch_size=4)
    alone = torch.cat([sentence_embeddings(bert, tokenizer, [t]) for t in TEXTS])
    assert together.shape == (4, 32)
    assert torch.allclose(together.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(together, alone, atol=1e-5)


def test_bad_inputs_are_named(bert: Any, tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match="texts"):
        embedding_fidelity(bert, bert, tokenizer, "one string")
    with pytest.raises(ConfigError, match="batch_size"):
        sentence_embeddings(bert, tokenizer, TEXTS, batch_size=0)
    head = transformers.BertForSequenceClassification(bert.config).eval()
    with pytest.raises(ConfigError, match="last_hidden_state"):
        sentence_embeddings(head, tokenizer, TEXTS)
