"""Structured pruning of Hugging Face architectures with ``pk.prune``: which ones work.

Tiny random-init configurations of 26 ``transformers`` architectures (decoders with GQA,
rotary, ALiBi, parallel attention, encoders, encoder-decoders, vision and speech models),
each pruned at ratio 0.5 with L2 norms on a fresh copy, as benchmarks/structured.py prunes
its zoo (same success rule: the pruned model runs, keeps its output shapes and lost
parameters; the same output layers left alone). Columns: ``ok`` or the reason, fraction of
parameters kept. Torch-Pruning is not compared here: called as in the zoo benchmark it
fails on tuple/ModelOutput outputs and prunes the hidden size of base models' outputs, so a
fair run would need per-model output transforms and ignore lists. Not a test.

Command (transformers is in the dev extra):

    .venv/bin/python benchmarks/structured_transformers.py [--models bloom,falcon] [--timeout 60]
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.structured.zoo
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.structured.zoo import ZooEntry  # noqa: E402

from structured import _timeout, attempt, run_prunekit  # noqa: E402

Inputs = dict[str, torch.Tensor]


def _cases() -> dict[str, Callable[[], tuple[nn.Module, Inputs]]]:
    import transformers as tr

    def ids() -> torch.Tensor:
        return torch.randint(1, 100, (2, 8))

    def pixels() -> torch.Tensor:
        return torch.randn(2, 3, 32, 32)

    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64}
    lm = {"vocab_size": 100, "max_position_embeddings": 32, **sizes}
    seq = {"vocab_size": 100, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
           "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64,
           "decoder_ffn_dim": 64, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
           "decoder_start_token_id": 2}
    return {
        "llama": lambda: (tr.LlamaForCausalLM(tr.LlamaConfig(num_key_value_heads=2, **lm)),
                          {"input_ids": ids()}),
        "mistral": lambda: (tr.MistralForCausalLM(tr.MistralConfig(num_key_value_heads=2, **lm)),
                            {"input_ids": ids()}),
        "qwen2": lambda: (tr.Qwen2ForCausalLM(tr.Qwen2Config(num_key_value_heads=2, **lm)),
                          {"input_ids": ids()}),
        "gemma": lambda: (tr.GemmaForCausalLM(tr.GemmaConfig(num_key_value_heads=2, head_dim=8,
                                                              **lm)), {"input_ids": ids()}),
        "phi": lambda: (tr.PhiForCausalLM(tr.PhiConfig(**lm)), {"input_ids": ids()}),
        "gpt2": lambda: (tr.GPT2LMHeadModel(tr.GPT2Config(vocab_size=100, n_embd=32, n_layer=2,
                                                           n_head=4, n_positions=32)),
                         {"input_ids": ids()}),
        "gpt_neox": lambda: (tr.GPTNeoXForCausalLM(tr.GPTNeoXConfig(**lm)), {"input_ids": ids()}),
        "opt": lambda: (tr.OPTForCausalLM(tr.OPTConfig(vocab_size=100, hidden_size=32,
                                                        num_hidden_layers=2,
                                                        num_attention_heads=4, ffn_dim=64,
                                                        max_position_embeddings=32,
                                                        word_embed_proj_dim=32)),
                        {"input_ids": ids()}),
        "bloom": lambda: (tr.BloomForCausalLM(tr.BloomConfig(vocab_size=100, hidden_size=32,
                                                              n_layer=2, n_head=4)),
                          {"input_ids": ids()}),
        "falcon": lambda: (tr.FalconForCausalLM(tr.FalconConfig(vocab_size=100, hidden_size=32,
                                                                 num_hidden_layers=2,
                                                                 num_attention_heads=4)),
                           {"input_ids": ids()}),
        "bert": lambda: (tr.BertModel(tr.BertConfig(**lm)), {"input_ids": ids()}),
        "roberta": lambda: (tr.RobertaModel(tr.RobertaConfig(**{
            **lm, "max_position_embeddings": 40})), {"input_ids": ids()}),
        "distilbert": lambda: (tr.DistilBertModel(tr.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
            max_position_embeddings=32)), {"input_ids": ids()}),
        "albert": lambda: (tr.AlbertModel(tr.AlbertConfig(embedding_size=16, **lm)),
                           {"input_ids": ids()}),
        "electra": lambda: (tr.ElectraModel(tr.ElectraConfig(embedding_size=16, **lm)),
                            {"input_ids": ids()}),
        "deberta_v2": lambda: (tr.DebertaV2Model(tr.DebertaV2Config(**lm)), {"input_ids": ids()}),
        "t5": lambda: (tr.T5Model(tr.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64,
                                              num_layers=2, num_heads=4)),
                       {"input_ids": ids(), "decoder_input_ids": ids()}),
        "bart": lambda: (tr.BartModel(tr.BartConfig(max_position_embeddings=32, **seq)),
                         {"input_ids": ids()}),
        "vit": lambda: (tr.ViTModel(tr.ViTConfig(image_size=32, patch_size=8, **sizes)),
                        {"pixel_values": pixels()}),
        "deit": lambda: (tr.DeiTModel(tr.DeiTConfig(image_size=32, patch_size=8, **sizes)),
                         {"pixel_values": pixels()}),
        "clip_vision": lambda: (tr.CLIPVisionModel(tr.CLIPVisionConfig(
            image_size=32, patch_size=8, **sizes)), {"pixel_values": pixels()}),
        "swin": lambda: (tr.SwinModel(tr.SwinConfig(image_size=32, patch_size=4, embed_dim=16,
                                                     depths=[1, 1], num_heads=[2, 4],
                                                     window_size=4)),
                         {"pixel_values": pixels()}),
        "resnet": lambda: (tr.ResNetModel(tr.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16],
                                                          depths=[1, 1])),
                           {"pixel_values": pixels()}),
        "mobilevit": lambda: (tr.MobileViTModel(tr.MobileViTConfig(
            image_size=32, hidden_sizes=[16, 24, 32],
            neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64])), {"pixel_values": pixels()}),
        "segformer": lambda: (tr.SegformerModel(tr.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
            num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
            mlp_ratios=[2, 2])), {"pixel_values": pixels()}),
        "wav2vec2": lambda: (tr.Wav2Vec2Model(tr.Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)),
            {"input_values": torch.randn(2, 400)}),
    }


def _entry(name: str, make: Callable[[], tuple[nn.Module, Inputs]]) -> ZooEntry:
    built: dict[str, tuple[nn.Module, Inputs]] = {}

    def pair() -> tuple[nn.Module, Inputs]:
        if "pair" not in built:
            torch.manual_seed(0)
            built["pair"] = make()
        return built["pair"]

    return ZooEntry(name, lambda: pair()[0], lambda: pair()[1], False, "transformers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="")
    parser.add_argument("--timeout", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGALRM, _timeout)
    cases = _cases()
    names = [n for n in args.models.split(",") if n] or list(cases)
    print(f"{'model':<12} {'prunekit':<70} kept")
    succeeded = 0
    for name in names:
        entry = _entry(name, cases[name])
        params = sum(p.numel() for p in entry.build().parameters())
        result: dict[str, Any] = attempt(run_prunekit, entry, 1, args.timeout)
        succeeded += bool(result["ok"])
        kept = (sum(p.numel() for p in result["model"].parameters()) / params
                if result["ok"] else float("nan"))
        print(f"{name:<12} {'ok' if result['ok'] else result['why'][:68]:<70} {kept:.3f}")
    print(f"success: prunekit {succeeded}/{len(names)}")

if __name__ == "__main__":
    main()
