"""drop_experts on every mixture-of-experts family of the installed Transformers, random init.

Every model type whose modeling code names an expert count is built tiny from its config
(``AutoConfig.for_model`` with small shared sizes and 4 experts, top-2, plus a few
per-family settings; ``AutoModelForCausalLM.from_config``); families that do not build or
run that way (multimodal configs, defaults too big) are listed as ``not built``, dense-only
defaults as ``no MoE layer found``. For each built one, each MoE layer's most routed expert
on the input is dropped and the pruned logits are compared with the
dense model's when the dropped experts' router logits are ``-inf`` (``err``: max abs
difference; ``moved``: how far that masking moves the dense logits, so ``err`` much smaller
than ``moved`` means the router and the experts were cut consistently), then
``save_pretrained`` → ``from_pretrained`` is checked (``reload``: max abs difference).
Routers start as N(0, 0.5) and selection biases at zero so the masked reference is exact.

    .venv/bin/python benchmarks/experts_transformers.py [--models mixtral,olmoe]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.llm.moe_models

from tests.llm.moe_models import randomize_routers, routers_masked  # noqa: E402

from prunekit.errors import ConfigError  # noqa: E402
from prunekit.llm.experts import drop_experts, expert_usage, find_moe_layers  # noqa: E402

SIZES = {"vocab_size": 100, "max_position_embeddings": 64, "hidden_size": 32,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
         "intermediate_size": 64, "head_dim": 8, "num_experts": 4, "num_local_experts": 4,
         "n_routed_experts": 4, "moe_num_experts": 4, "num_experts_per_tok": 2,
         "moe_intermediate_size": 16, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 0,
         "kv_lora_rank": 8, "q_lora_rank": 8, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4,
         "v_head_dim": 8, "shared_expert_intermediate_size": 16, "pad_token_id": 0,
         "bos_token_id": 1, "eos_token_id": 2}
SSM = {"mamba_d_state": 8, "mamba_n_heads": 8, "mamba_d_head": 8, "mamba_n_groups": 1,
       "mamba_chunk_size": 8, "mamba_expand": 2}
# what a family needs beyond SIZES to build with an attention layer and an MoE layer
OVERRIDES: dict[str, dict[str, Any]] = {
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2,
              "expert_layer_offset": 1, "mamba_d_state": 8, "mamba_expand": 2},
    "kimi_linear": {"mlp_layer_types": ["dense", "sparse"], "linear_head_dim": 8,
                    "linear_num_heads": 4,
                    "layer_types": ["linear_attention", "full_attention"]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    "granitemoehybrid": {"layer_types": ["mamba", "attention"], "shared_intermediate_size": 64,
                         **SSM},
    "bamba": {"attn_layer_indices": [1], **SSM},
    "dots1": {"first_k_dense_replace": 1, "n_shared_experts": 1},
    "deepseek_v3": {"head_dim": 4}, "axk1": {"head_dim": 4}, "longcat_flash": {"head_dim": 4},
    "mimo_v2_flash": {"layer_types": ["full_attention", "full_attention"]},
    "qwen3_next": {"layer_types": ["linear_attention", "full_attention"]},
    "qwen3_5_moe_text": {"layer_types": ["linear_attention", "full_attention"]},
    "bailing_hybrid": {"layer_types": ["linear_attention", "full_attention"]},
}
MAX_PARAMS = 5_000_000  # a family whose defaults outgrow the shared sizes is skipped


def moe_types() -> list[str]:
    import transformers
    from transformers.models.auto.configuration_auto import (
        CONFIG_MAPPING_NAMES,
        model_type_to_module_name,
    )

    root = Path(transformers.__file__).parent / "models"
    found = []
    for name in CONFIG_MAPPING_NAMES:
        files = list((root / model_type_to_module_name(name)).glob("modeling_*.py"))
        if any(re.search(r"num_(local_)?experts|n_routed_experts", f.read_text()) for f in files):
            found.append(name)
    return sorted(found)


def build(model_type: str) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type,
                                               **{**SIZES, **OVERRIDES.get(model_type, {})})
    with torch.device("meta"):
        size = sum(p.numel() for p in
                   transformers.AutoModelForCausalLM.from_config(config).parameters())
    if size > MAX_PARAMS:
        raise MemoryError(f"{size:,} parameters from the config defaults")
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    logits(model, torch.randint(3, 100, (1, 4)))  # a config the family cannot run is not built
    randomize_routers(model)
    return model


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def check(model_type: str) -> str:
    try:
        model = build(model_type)
    except Exception as error:
        return f"not built ({type(error).__name__}: {_one_line(error)[:90]})"
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    try:
        layers = find_moe_layers(model)
        if not layers:
            return "no MoE layer found"
        usage = expert_usage(model, ids)  # drop each layer's most routed expert
        removed = {layer.path: [max(range(layer.count),
                                    key=lambda e, p=layer.path: usage[p]["frequency"][e])]
                   for layer in layers}
        weights = {layer.path: layer.router_weight for layer in layers}
        dense = logits(model, ids)
        with routers_masked({weights[p]: r for p, r in removed.items()}):
            reference = logits(model, ids)
        result = drop_experts(model, removed, calib=ids)
        got = logits(result.model, ids)
        with tempfile.TemporaryDirectory() as directory:
            result.model.save_pretrained(directory)
            again = logits(type(model).from_pretrained(directory).eval(), ids)
    except ConfigError as error:  # refused, with the reason
        return f"refused: {_one_line(error)[:160]}"
    except Exception as error:
        return f"FAIL {type(error).__name__}: {_one_line(error)[:160]}"
    err = float((got - reference).abs().max())
    moved = float((dense - reference).abs().max())
    status = "ok" if err <= 1e-4 * max(1.0, moved) and moved > 0 else "MISMATCH"
    return (f"{status} layers={len(layers)} experts={layers[0].count} err={err:.1e} "
            f"moved={moved:.1e} reload={float((again - got).abs().max()):.1e} "
            f"params {result.params_before}->{result.params_after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated model types")
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    names = [n for n in args.models.split(",") if n] or moe_types()
    tally: dict[str, int] = {}
    for name in names:
        line = check(name)
        kind = line.split()[0].rstrip(":")
        tally[kind] = tally.get(kind, 0) + 1
        print(f"{name:28s} {line}", flush=True)
    print("summary: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))


if __name__ == "__main__":
    main()
