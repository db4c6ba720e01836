"""drop_experts on random-init tiny Transformers MoE decoders of 16 families: the pruned model
equals the dense one with the dropped experts' router logits at -inf, its config counts the
kept experts and save_pretrained → from_pretrained gives the same logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests.llm.moe_models import randomize_routers, routers_masked
from torch import nn

from prunekit.errors import ConfigError
from prunekit.llm.experts import drop_experts, find_moe_layers

transformers = pytest.importorskip("transformers")

COMMON = {"vocab_size": 100, "max_position_embeddings": 32, "hidden_size": 32,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 64}
MOE = {"num_experts": 4, "num_local_experts": 4, "num_experts_per_tok": 2,
       "moe_intermediate_size": 16}
MLA = {"kv_lora_rank": 8, "q_lora_rank": 8, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4,
       "v_head_dim": 8, "n_routed_experts": 4, "n_group": 1, "topk_group": 1}
FAMILIES: dict[str, dict[str, Any]] = {
    "mixtral": MOE,
    "qwen2_moe": {"shared_expert_intermediate_size": 16, **MOE},
    "qwen3_moe": {"head_dim": 8, **MOE},
    "olmoe": MOE,
    "phimoe": MOE,
    "jetmoe": {"kv_channels": 8, **MOE},
    "deepseek_v3": {"first_k_dense_replace": 1, "num_key_value_heads": 4, **MLA, **MOE},
    "deepseek_v2": {**MLA, **MOE},
    "gpt_oss": {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 4,
                "head_dim": 8, **MOE},
    "llama4_text": {"intermediate_size_mlp": 64, "head_dim": 8, **MOE},
    "granitemoe": MOE,
    "hunyuan_v1_moe": {"head_dim": 8, **MOE},
    "ernie4_5_moe": {"head_dim": 8, **MOE},
    "minimax_m2": {"head_dim": 8, **MOE},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1, **MOE},
    "afmoe": {"head_dim": 8, **MOE},
}


def _model(family: str) -> nn.Module:
    if family not in transformers.models.auto.configuration_auto.CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no {family}")
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(family, **{**COMMON, **FAMILIES[family]})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    randomize_routers(model)
    return model


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_drops_experts_like_masked_router_and_reloads(family: str,
                                                             tmp_path: Path) -> None:
    model = _model(family)
    layers = find_moe_layers(model)
    assert layers and all(layer.count == 4 for layer in layers)
    removed = {layer.path: [(i + 1) % 4] for i, layer in enumerate(layers)}
    weights = {layer.path: layer.router_weight for layer in layers}
    with routers_masked({weights[p]: r for p, r in removed.items()}):
        reference = _logits(model, IDS)
    assert not torch.allclose(reference, _logits(model, IDS))  # the masking matters
    result = drop_experts(model, removed, calib=IDS)
    got = _logits(result.model, IDS)
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-5)
    config = result.model.config
    counts = {n: getattr(config, n) for n in ("num_local_experts", "num_experts",
                                               "n_routed_experts")
              if isinstance(getattr(config, n, None), int)}
    assert counts and set(counts.values()) == {3}, counts
    assert result.params_after < result.params_before
    result.model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(reloaded, IDS), got, rtol=0, atol=0)
    assert getattr(model.config, "num_local_experts", 4) == 4  # the user's config untouched


def test_usage_ranked_drop_on_mixtral_runs_and_counts() -> None:
    model = _model("mixtral")
    result = drop_experts(model, 0.5, calib=[IDS, IDS[:1]])
    assert result.experts_before == 8 and result.experts_after == 4
    assert result.usage is not None and set(result.usage) == set(result.removed)
    for path, removed in result.removed.items():
        freq = result.usage[path]["frequency"]
        kept = [f for i, f in enumerate(freq) if i not in removed]
        assert max(freq[i] for i in removed) <= min(kept)
    assert result.model.config.num_local_experts == 2
    assert _logits(result.model, IDS).shape == (2, 8, 100)


def test_grouped_routing_refused() -> None:
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(
        "deepseek_v3", **{**COMMON,
        **FAMILIES["deepseek_v3"], "n_group": 2, "topk_group": 1})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(ConfigError, match="n_group=2"):
        drop_experts(model, 1, calib=IDS)
