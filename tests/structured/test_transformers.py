"""Random-init tiny Hugging Face models (BERT, GPT-2, ViT, LLaMA with GQA, Mamba, Mamba2,
the Bamba hybrid, the Phi-MoE and JetMoE mixtures of experts, GPT-BigCode's multi-query
attention, Llama 4, GPT-OSS, Qwen3.5) prune, run and keep their output shapes; skipped
without the ``transformers`` test extra."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from prunekit.structured import prune

transformers = pytest.importorskip("transformers")


def _bert() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32)
    ids = torch.randint(0, 100, (2, 8))
    return transformers.BertModel(config), {"input_ids": ids,
                                            "attention_mask": torch.ones_like(ids)}


def _gpt2() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                     n_positions=32, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config), {"input_ids": torch.randint(0, 100, (2, 8))}


def _vit() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64)
    return transformers.ViTForImageClassification(config), {
        "pixel_values": torch.randn(2, 3, 32, 32)}


def _llama() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config), {"input_ids": torch.randint(0, 100, (2, 8))}


def _mamba() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    config = transformers.MambaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                      state_size=8, expand=2, use_mambapy=False)
    return transformers.MambaForCausalLM(config), {"input_ids": torch.randint(0, 100, (2, 8))}


def _mamba2(n_groups: int = 1) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    config = transformers.Mamba2Config(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                       state_size=8, num_heads=8, head_dim=8,
                                       n_groups=n_groups, expand=2, chunk_size=8)
    return transformers.Mamba2ForCausalLM(config), {"input_ids": torch.randint(0, 100, (2, 8))}


def _bamba() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A hybrid: a Mamba2 layer, then an attention layer."""
    config = transformers.BambaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, attn_layer_indices=[1], mamba_d_state=8,
        mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=1, mamba_chunk_size=8, mamba_expand=2)
    return transformers.BambaForCausalLM(config), {"input_ids": torch.randint(0, 100, (2, 8))}


def _moe(kind: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    if kind == "phimoe":  # routes by gather over the top-k expert scores
        model: nn.Module = transformers.PhimoeForCausalLM(transformers.PhimoeConfig(
            vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
            num_experts_per_tok=2, max_position_embeddings=32))
    else:  # jetmoe: scatters the top-k gates into a [tokens, experts] map
        model = transformers.JetMoeForCausalLM(transformers.JetMoeConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_key_value_heads=2,
            kv_channels=8, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2))
    return model, {"input_ids": torch.randint(0, 100, (2, 8))}


MODELS: dict[str, Callable[[], tuple[nn.Module, dict[str, torch.Tensor]]]] = {
    "bert": _bert, "gpt2": _gpt2, "vit": _vit, "llama": _llama, "mamba": _mamba,
    "mamba2": _mamba2, "bamba": _bamba,
    "phimoe": lambda: _moe("phimoe"), "jetmoe": lambda: _moe("jetmoe")}


def _shapes(out: Any) -> list[tuple[int, ...]]:
    return [tuple(v.shape) for v in out.values() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("name", list(MODELS))
def test_hugging_face_models_prune(name: str) -> None:
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    model.eval()
    result = prune(model, inputs, ratio=0.5)
    with torch.no_grad():
        assert _shapes(result.model(**inputs)) == _shapes(model(**inputs))
    assert result.params_kept < 0.8


def test_llama_gqa_heads_shrink_by_kv_group() -> None:
    torch.manual_seed(0)
    model, inputs = _llama()
    result = prune(model.eval(), inputs, ratio=0.5)
    attn = result.model.model.layers[0].self_attn
    assert attn.k_proj.out_features == attn.head_dim  # one of two key/value heads left
    assert attn.q_proj.out_features == 2 * attn.head_dim  # and its two query heads


def test_mamba_inner_channels_prune_with_its_scan_parameters() -> None:
    torch.manual_seed(0)
    model, inputs = _mamba()
    result = prune(model.eval(), inputs, ratio=0.5)
    mixer = result.model.backbone.layers[0].mixer
    inner = mixer.conv1d.weight.shape[0]
    assert inner < 64 and mixer.conv1d.out_channels == mixer.conv1d.groups == inner
    assert mixer.A_log.shape[0] == mixer.D.shape[0] == mixer.dt_proj.out_features == inner
    assert mixer.in_proj.out_features == 2 * inner and mixer.out_proj.in_features == inner
    assert result.params_kept < 0.5
    with torch.no_grad():  # decoding with the cache sizes its states from the pruned layers
        tokens = result.model.generate(inputs["input_ids"], max_new_tokens=3, do_sample=False)
    assert tokens.shape == (2, 11)


def test_mamba2_heads_prune_with_their_split_sizes() -> None:
    """Mamba2 splits its projection by ``[intermediate_size, conv_dim, num_heads]`` and its
    conv output by ``[intermediate_size, n_groups * state, n_groups * state]``: whole heads
    go, those attributes are rewritten, B and C keep their width."""
    torch.manual_seed(0)
    model, inputs = _mamba2()
    result = prune(model.eval(), inputs, ratio=0.5)
    mixer = result.model.backbone.layers[0].mixer
    heads = mixer.num_heads
    assert heads < 8 and mixer.head_dim == 8 and mixer.ssm_state_size == 8
    assert mixer.intermediate_size == heads * 8 and mixer.conv_dim == heads * 8 + 16
    assert mixer.in_proj.out_features == 2 * heads * 8 + 16 + heads
    assert mixer.conv1d.weight.shape[0] == mixer.conv1d.groups == mixer.conv_dim
    assert mixer.A_log.shape == mixer.D.shape == mixer.dt_bias.shape == (heads,)
    assert mixer.out_proj.in_features == mixer.norm.group_size == heads * 8
    with torch.no_grad():  # the cached (recurrent) decode agrees with the chunked scan
        steps = [result.model.generate(inputs["input_ids"], max_new_tokens=3, do_sample=False,
                                       use_cache=cached, output_logits=True,
                                       return_dict_in_generate=True) for cached in (True, False)]
    assert steps[0].sequences.shape == (2, 11)
    for cached, full in zip(steps[0].logits, steps[1].logits, strict=True):
        torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)


def test_mamba2_groups_of_heads_prune_whole() -> None:
    """Two groups of B and C (``n_groups=2``, as in Codestral Mamba and Nemotron-H): whole
    groups go with their four heads; ``n_groups`` and the split sizes are rewritten, the
    gated norm's ``group_size`` stays, and the cached decode agrees with the chunked scan."""
    torch.manual_seed(0)
    model, inputs = _mamba2(n_groups=2)
    result = prune(model.eval(), inputs, ratio=0.5)
    for layer in result.model.backbone.layers:
        mixer = layer.mixer
        assert (mixer.n_groups, mixer.num_heads, mixer.ssm_state_size) == (1, 4, 8)
        assert mixer.conv_dim == 32 + 2 * 8 and mixer.norm.group_size == 32
        assert mixer.in_proj.out_features == 2 * 32 + 16 + 4
    assert not [name for name in result.coverage.fixed if ".mixer." in name]
    with torch.no_grad():
        steps = [result.model.generate(inputs["input_ids"], max_new_tokens=3, do_sample=False,
                                       use_cache=cached, output_logits=True,
                                       return_dict_in_generate=True) for cached in (True, False)]
    for cached, full in zip(steps[0].logits, steps[1].logits, strict=True):
        torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)


def test_gpt_bigcode_query_heads_prune_around_its_one_key_value_head() -> None:
    """GPT-BigCode's multi-query attention, run through SDPA's ``enable_gqa``: query heads
    go, ``num_key_value_groups`` follows them, and with a padding mask (the repeat path that
    reads it) the pruned model agrees with its eager attention on the unmasked tokens."""
    torch.manual_seed(0)
    config = transformers.GPTBigCodeConfig(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                           n_positions=32, multi_query=True)
    model, ids = transformers.GPTBigCodeForCausalLM(config).eval(), torch.randint(0, 100, (2, 8))
    result = prune(model, {"input_ids": ids}, ratios={"transformer.h.0.attn.c_attn": 0.5})
    attn = result.model.transformer.h[0].attn
    heads = attn.c_proj.in_features // attn.head_dim
    assert heads == 2 and attn.num_key_value_groups == heads and attn.kv_dim == attn.head_dim
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    outputs = []
    with torch.no_grad():
        for implementation in ("sdpa", "eager"):
            result.model.config._attn_implementation = implementation
            outputs.append(result.model(ids, attention_mask=mask).logits[mask.bool()])
    torch.testing.assert_close(*outputs)


_RECENT = {  # 2025-2026 decoders, each with what used to stop it (see results/structured.md)
    "llama4_text": {"intermediate_size_mlp": 64},  # complex rotary, every-expert bmm
    "gpt_oss": {"layer_types": ["sliding_attention", "full_attention"],
                "sliding_window": 4},  # gate and up interleaved in its experts
    "qwen3_5_text": {"layer_types": ["linear_attention", "full_attention"],
                     "linear_num_value_heads": 4, "linear_num_key_heads": 2,
                     "linear_key_head_dim": 8, "linear_value_head_dim": 8},  # triangular solve
}


@pytest.mark.parametrize("model_type", sorted(_RECENT))
def test_recent_decoders_prune_and_decode_alike(model_type: str) -> None:
    """Llama 4, GPT-OSS and Qwen3.5 lose most of their parameters at ratio 0.5, and the
    pruned model's cached decode agrees with its uncached one."""
    if model_type not in transformers.CONFIG_MAPPING:
        pytest.skip(f"this transformers has no {model_type}")
    config = transformers.AutoConfig.for_model(
        model_type, vocab_size=100, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64,
        max_position_embeddings=32, num_local_experts=4, num_experts=4,
        num_experts_per_tok=2, **_RECENT[model_type])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(1, 100, (2, 8))
    result = prune(model, {"input_ids": ids}, ratio=0.5)
    kept = sum(p.numel() for p in result.model.parameters())
    assert kept < 0.4 * sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        steps = [result.model.generate(ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=3, do_sample=False, use_cache=cached,
                                       output_logits=True, return_dict_in_generate=True)
                 for cached in (True, False)]
    for cached, full in zip(steps[0].logits, steps[1].logits, strict=True):
        torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)
