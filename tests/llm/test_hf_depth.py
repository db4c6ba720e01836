"""Block influence and layer dropping on random-init tiny LLaMA, BERT and Qwen2: the
shallower model reloads with ``from_pretrained`` and gives identical outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.llm.depth import block_influence, drop_layers

transformers = pytest.importorskip("transformers")


def _llama(layers: int = 3) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=layers, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config).eval()


def _bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32)
    return transformers.BertModel(config).eval()


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=3, n_head=4,
                                     n_positions=32, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def _ids(rows: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 100, (rows, 8), generator=torch.Generator().manual_seed(seed))


def _out(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: Any = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_block_influence_is_one_minus_cosine_per_layer() -> None:
    model = _llama()
    scores = block_influence(model, _ids(4))
    assert len(scores) == 3 and all(0 <= s <= 2 for s in scores)
    # an identity-like block (all output projections zero) has influence 0
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    assert block_influence(model, _ids(4))[1] == pytest.approx(0.0, abs=1e-6)
    assert model.training is False


@pytest.mark.parametrize("build", [_llama, _bert, _gpt2], ids=["llama", "bert", "gpt2"])
def test_dropped_layers_reload_identically(build: Any, tmp_path: Path) -> None:
    model = build()
    ids = _ids()
    result = drop_layers(model, [1])
    pruned = result.model
    assert result.removed == (1,) and pruned.config.num_hidden_layers == 2
    assert model.config.num_hidden_layers == 3  # the user's model is untouched
    out = _out(pruned, ids)
    assert out.shape == _out(model, ids).shape and torch.isfinite(out).all()
    pruned.save_pretrained(tmp_path)
    reloaded = type(pruned).from_pretrained(tmp_path).eval()
    assert torch.equal(_out(reloaded, ids), out)


def test_count_drops_least_influential_and_renumbers_cache_slots(tmp_path: Path) -> None:
    model = _llama(layers=4)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    result = drop_layers(model, 1, calib=_ids(4, seed=3))
    assert result.removed == (2,) and result.influence is not None
    assert min(result.influence) == result.influence[2]
    layers = result.model.model.layers
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2]
    # cached generation indexes the KV cache by layer_idx
    ids = _ids(1)
    generated = result.model.generate(ids, max_new_tokens=3, do_sample=False)
    result.model.save_pretrained(tmp_path)
    reloaded = type(result.model).from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded.generate(ids, max_new_tokens=3, do_sample=False), generated)


def test_per_layer_config_lists_are_sliced(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32,
                                      use_sliding_window=True, sliding_window=4,
                                      max_window_layers=1)
    model = transformers.Qwen2ForCausalLM(config).eval()
    before = list(model.config.layer_types)
    assert len(set(before)) == 2  # full and sliding attention layers
    pruned = drop_layers(model, [0]).model
    assert list(pruned.config.layer_types) == before[1:]
    pruned.save_pretrained(tmp_path)
    reloaded = type(pruned).from_pretrained(tmp_path).eval()
    assert torch.equal(_out(reloaded, _ids()), _out(pruned, _ids()))


def test_bad_layer_choices_are_named() -> None:
    model = _llama()
    with pytest.raises(ConfigError, match="calib"):
        drop_layers(model, 1)
    with pytest.raises(ConfigError, match="between 1 and 2"):
        drop_layers(model, 3, calib=_ids())
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        drop_layers(model, [5])
    with pytest.raises(ConfigError, match="keep at least one"):
        drop_layers(model, [0, 1, 2])
    with pytest.raises(ConfigError, match="once"):
        drop_layers(model, [1, 1])
    with pytest.raises(TypeError, match="ints"):
        drop_layers(model, ["1"])  # type: ignore[list-item]
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3


def test_inplace_drop_changes_the_given_model() -> None:
    model = _llama()
    result = drop_layers(model, [0, 2], inplace=True)
    assert result.model is model and len(model.model.layers) == 1
    assert model.config.num_hidden_layers == 1 and model.model.layers[0].self_attn.layer_idx == 0


def test_heads_ffn_and_layers_together_reload_identically(tmp_path: Path) -> None:
    from prunekit.llm.hf import prune_hf

    model = _llama()
    ids = _ids()
    width = prune_hf(model, {"input_ids": ids}, heads=0.5, ffn=0.25)
    pruned = drop_layers(width.model, 1, calib=_ids(4, seed=3), inplace=True).model
    config = pruned.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size) == (2, 2, 1, 48)
    pruned.save_pretrained(tmp_path)
    reloaded = type(pruned).from_pretrained(tmp_path).eval()
    assert torch.equal(_out(reloaded, ids), _out(pruned, ids))


def test_influence_skips_padding_of_input_dicts() -> None:
    model = _bert()
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # the second text is 5 tokens long, padded to 8
    padded = block_influence(model, [{"input_ids": ids, "attention_mask": mask}])
    alone = block_influence(model, [{"input_ids": ids[:1]}, {"input_ids": ids[1:, :5]}])
    assert padded == pytest.approx(alone, rel=1e-4)
    assert block_influence(model, [{"input_ids": ids}]) != pytest.approx(padded, rel=1e-3)
