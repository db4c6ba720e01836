"""Structured pruning of Hugging Face architectures with ``pk.prune``: which ones work.

Tiny random-init configurations of 144 ``transformers`` architectures (decoders with GQA,
rotary, ALiBi, parallel attention, multi-query and multi-head latent attention and
mixture-of-experts MLPs, state-space and recurrent decoders, hybrids of attention with
Mamba2, Mamba, gated DeltaNet or short-convolution layers, encoders, encoder-decoders,
vision CNNs and transformers, detection and segmentation heads, speech, audio-codec and
time-series models), each pruned at ratio 0.5 with L2 norms on a
fresh copy, as benchmarks/structured.py prunes its zoo (same success rule: the pruned
model runs, keeps its output shapes and lost parameters; the same output layers left
alone). Columns: ``ok`` or the reason, fraction of parameters kept. Torch-Pruning is
not compared here: called as in the zoo benchmark it fails on tuple/ModelOutput outputs
and prunes the hidden size of base models' outputs, so a fair run would need per-model
output transforms and ignore lists. Not a test.

Command (transformers is in the dev extra):

    .venv/bin/python benchmarks/structured_transformers.py [--models bloom,falcon] [--timeout 60]
        [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import functools
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
        "mixtral": lambda: (tr.MixtralForCausalLM(tr.MixtralConfig(
            num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, **lm)),
            {"input_ids": ids()}),
        "qwen2_moe": lambda: (tr.Qwen2MoeForCausalLM(tr.Qwen2MoeConfig(
            num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, shared_expert_intermediate_size=64, **lm)),
            {"input_ids": ids()}),
        "gemma2": lambda: (tr.Gemma2ForCausalLM(tr.Gemma2Config(
            num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
            **lm)), {"input_ids": ids()}),
        "gemma3_text": lambda: (tr.Gemma3ForCausalLM(tr.Gemma3TextConfig(
            num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
            **lm)), {"input_ids": ids()}),
        "phi3": lambda: (tr.Phi3ForCausalLM(tr.Phi3Config(num_key_value_heads=2, pad_token_id=0,
                                                          **lm)), {"input_ids": ids()}),
        "olmo": lambda: (tr.OlmoForCausalLM(tr.OlmoConfig(pad_token_id=0, **lm)),
                         {"input_ids": ids()}),
        "olmo2": lambda: (tr.Olmo2ForCausalLM(tr.Olmo2Config(pad_token_id=0, **lm)),
                          {"input_ids": ids()}),
        "stablelm": lambda: (tr.StableLmForCausalLM(tr.StableLmConfig(num_key_value_heads=2,
                                                                       **lm)),
                             {"input_ids": ids()}),
        "starcoder2": lambda: (tr.Starcoder2ForCausalLM(tr.Starcoder2Config(
            num_key_value_heads=2, **lm)), {"input_ids": ids()}),
        "gpt_bigcode": lambda: (tr.GPTBigCodeForCausalLM(tr.GPTBigCodeConfig(
            vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32, multi_query=True)),
            {"input_ids": ids()}),
        "gptj": lambda: (tr.GPTJForCausalLM(tr.GPTJConfig(vocab_size=100, n_embd=32, n_layer=2,
                                                          n_head=4, rotary_dim=4,
                                                          n_positions=32)),
                         {"input_ids": ids()}),
        "codegen": lambda: (tr.CodeGenForCausalLM(tr.CodeGenConfig(
            vocab_size=100, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=32,
            n_ctx=32)), {"input_ids": ids()}),
        "gpt_neo": lambda: (tr.GPTNeoForCausalLM(tr.GPTNeoConfig(
            vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
            attention_types=[[["global", "local"], 1]], window_size=4,
            max_position_embeddings=32)), {"input_ids": ids()}),
        "mpt": lambda: (tr.MptForCausalLM(tr.MptConfig(vocab_size=100, d_model=32, n_heads=4,
                                                       n_layers=2, expansion_ratio=2,
                                                       max_seq_len=32)),
                        {"input_ids": ids()}),
        "xlm_roberta": lambda: (tr.XLMRobertaModel(tr.XLMRobertaConfig(**{
            **lm, "max_position_embeddings": 40})), {"input_ids": ids()}),
        "mpnet": lambda: (tr.MPNetModel(tr.MPNetConfig(**{**lm, "max_position_embeddings": 40})),
                          {"input_ids": ids()}),
        "convbert": lambda: (tr.ConvBertModel(tr.ConvBertConfig(embedding_size=32,
                                                                conv_kernel_size=3, **lm)),
                             {"input_ids": ids()}),
        "mobilebert": lambda: (tr.MobileBertModel(tr.MobileBertConfig(
            embedding_size=16, intra_bottleneck_size=16, num_feedforward_networks=2, **lm)),
            {"input_ids": ids()}),
        "funnel": lambda: (tr.FunnelBaseModel(tr.FunnelConfig(
            vocab_size=100, block_sizes=[1, 1], d_model=32, n_head=4, d_head=8, d_inner=64)),
            {"input_ids": ids()}),
        "mbart": lambda: (tr.MBartModel(tr.MBartConfig(max_position_embeddings=32, **seq)),
                          {"input_ids": ids()}),
        "pegasus": lambda: (tr.PegasusModel(tr.PegasusConfig(max_position_embeddings=32, **seq)),
                            {"input_ids": ids(), "decoder_input_ids": ids()}),
        "marian": lambda: (tr.MarianModel(tr.MarianConfig(max_position_embeddings=32, **seq)),
                           {"input_ids": ids(), "decoder_input_ids": ids()}),
        "mt5": lambda: (tr.MT5Model(tr.MT5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64,
                                                 num_layers=2, num_heads=4)),
                        {"input_ids": ids(), "decoder_input_ids": ids()}),
        "whisper": lambda: (tr.WhisperModel(tr.WhisperConfig(
            num_mel_bins=16, max_source_positions=16, max_target_positions=32,
            **{**seq, "decoder_start_token_id": 2})),
            {"input_features": torch.randn(2, 16, 32), "decoder_input_ids": ids()}),
        "dinov2": lambda: (tr.Dinov2Model(tr.Dinov2Config(image_size=32, patch_size=8, **sizes)),
                           {"pixel_values": pixels()}),
        "beit": lambda: (tr.BeitModel(tr.BeitConfig(image_size=32, patch_size=8,
                                                    use_relative_position_bias=True, **sizes)),
                         {"pixel_values": pixels()}),
        "convnext": lambda: (tr.ConvNextModel(tr.ConvNextConfig(hidden_sizes=[8, 16, 24, 32],
                                                                depths=[1, 1, 1, 1])),
                             {"pixel_values": pixels()}),
        "convnextv2": lambda: (tr.ConvNextV2Model(tr.ConvNextV2Config(
            hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])), {"pixel_values": pixels()}),
        "efficientnet": lambda: (tr.EfficientNetModel(tr.EfficientNetConfig(
            image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320)),
            {"pixel_values": pixels()}),
        "regnet": lambda: (tr.RegNetModel(tr.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16],
                                                          depths=[1, 1], groups_width=4)),
                           {"pixel_values": pixels()}),
        "levit": lambda: (tr.LevitModel(tr.LevitConfig(
            image_size=64, hidden_sizes=[16, 32, 48], num_attention_heads=[2, 4, 6],
            depths=[1, 1, 1], key_dim=[8, 8, 8], mlp_ratio=[2, 2, 2],
            attention_ratio=[2, 2, 2])), {"pixel_values": torch.randn(2, 3, 64, 64)}),
        "poolformer": lambda: (tr.PoolFormerModel(tr.PoolFormerConfig(
            depths=[1, 1], hidden_sizes=[16, 32], num_encoder_blocks=2)),
            {"pixel_values": pixels()}),
        "mobilenet_v2": lambda: (tr.MobileNetV2Model(tr.MobileNetV2Config(
            image_size=32, depth_multiplier=0.25)), {"pixel_values": pixels()}),
        "bit": lambda: (tr.BitModel(tr.BitConfig(embedding_size=8, hidden_sizes=[16, 32],
                                                 depths=[1, 1], num_groups=4)),
                        {"pixel_values": pixels()}),
        "pvt": lambda: (tr.PvtModel(tr.PvtConfig(image_size=32, num_encoder_blocks=2,
                                                 depths=[1, 1], sequence_reduction_ratios=[2, 1],
                                                 hidden_sizes=[16, 32], patch_sizes=[4, 2],
                                                 strides=[4, 2], num_attention_heads=[1, 2],
                                                 mlp_ratios=[2, 2])),
                        {"pixel_values": pixels()}),
        "swinv2": lambda: (tr.Swinv2Model(tr.Swinv2Config(image_size=32, patch_size=4,
                                                          embed_dim=16, depths=[1, 1],
                                                          num_heads=[2, 4], window_size=4)),
                           {"pixel_values": pixels()}),
        "mobilevitv2": lambda: (tr.MobileViTV2Model(tr.MobileViTV2Config(
            image_size=64, width_multiplier=0.25, n_attn_blocks=[1, 1, 1])),
            {"pixel_values": torch.randn(2, 3, 64, 64)}),
        "hubert": lambda: (tr.HubertModel(tr.HubertConfig(
            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, **sizes)),
            {"input_values": torch.randn(2, 400)}),
        "wavlm": lambda: (tr.WavLMModel(tr.WavLMConfig(
            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
            num_buckets=16, max_bucket_distance=32, **sizes)),
            {"input_values": torch.randn(2, 400)}),
        "siglip": lambda: (tr.SiglipVisionModel(tr.SiglipVisionConfig(
            image_size=32, patch_size=8, **sizes)), {"pixel_values": pixels()}),
        "clip_text": lambda: (tr.CLIPTextModel(tr.CLIPTextConfig(**lm)), {"input_ids": ids()}),
        **_more_decoders(tr, ids, lm, sizes),
        **_hybrids(tr, ids, lm),
        **_recent(tr, ids, lm),
        **_ninth(tr, ids, sizes),
    }


def _more_decoders(tr: Any, ids: Callable[[], torch.Tensor], lm: dict[str, int],
                   sizes: dict[str, int]) -> dict[str, Callable[[], tuple[nn.Module, Inputs]]]:
    """Architectures added in the sixth session: newer LLM families, MoE routers that gather
    and scatter, multi-head latent attention, state-space and recurrent models, and BigBird,
    XLNet, LED and Data2Vec-Vision."""
    kv = {"num_key_value_heads": 2, **lm}
    moe = {"num_experts_per_tok": 2}

    def lm_of(model: nn.Module) -> tuple[nn.Module, Inputs]:
        return model, {"input_ids": ids()}

    ssm = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "state_size": 8,
           "expand": 2}
    return {
        "qwen3": lambda: lm_of(tr.Qwen3ForCausalLM(tr.Qwen3Config(head_dim=8, **kv))),
        "qwen3_moe": lambda: lm_of(tr.Qwen3MoeForCausalLM(tr.Qwen3MoeConfig(
            head_dim=8, num_experts=4, moe_intermediate_size=32, **moe, **kv))),
        "olmoe": lambda: lm_of(tr.OlmoeForCausalLM(tr.OlmoeConfig(num_experts=4, **moe, **kv))),
        "phimoe": lambda: lm_of(tr.PhimoeForCausalLM(tr.PhimoeConfig(num_local_experts=4,
                                                                     **moe, **kv))),
        "jetmoe": lambda: lm_of(tr.JetMoeForCausalLM(tr.JetMoeConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_key_value_heads=2,
            kv_channels=8, intermediate_size=64, num_local_experts=4, **moe))),
        "deepseek_v3": lambda: lm_of(tr.DeepseekV3ForCausalLM(tr.DeepseekV3Config(
            q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4,
            v_head_dim=8, n_routed_experts=4, moe_intermediate_size=16,
            first_k_dense_replace=1, n_group=1, topk_group=1, **moe,
            **{**kv, "num_key_value_heads": 4}))),
        "granite": lambda: lm_of(tr.GraniteForCausalLM(tr.GraniteConfig(**kv))),
        "cohere": lambda: lm_of(tr.CohereForCausalLM(tr.CohereConfig(**kv))),
        "glm": lambda: lm_of(tr.GlmForCausalLM(tr.GlmConfig(head_dim=8, pad_token_id=0, **kv))),
        "gemma3": lambda: lm_of(tr.Gemma3ForCausalLM(tr.Gemma3TextConfig(
            head_dim=8, sliding_window=4, **kv))),
        "nemotron": lambda: lm_of(tr.NemotronForCausalLM(tr.NemotronConfig(**kv))),
        "smollm3": lambda: lm_of(tr.SmolLM3ForCausalLM(tr.SmolLM3Config(pad_token_id=0, **kv))),
        "helium": lambda: lm_of(tr.HeliumForCausalLM(tr.HeliumConfig(head_dim=8, **kv))),
        "mamba": lambda: lm_of(tr.MambaForCausalLM(tr.MambaConfig(use_mambapy=False, **ssm))),
        "falcon_mamba": lambda: lm_of(tr.FalconMambaForCausalLM(tr.FalconMambaConfig(**ssm))),
        "mamba2": lambda: lm_of(tr.Mamba2ForCausalLM(tr.Mamba2Config(
            num_heads=8, head_dim=8, n_groups=1, chunk_size=8, **ssm))),
        "rwkv": lambda: lm_of(tr.RwkvForCausalLM(tr.RwkvConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
            intermediate_size=64, context_length=32))),
        "recurrent_gemma": lambda: lm_of(tr.RecurrentGemmaForCausalLM(tr.RecurrentGemmaConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=1, intermediate_size=64, lru_width=32,
            attention_window_size=8, conv1d_width=4, head_dim=8))),
        "bigbird": lambda: lm_of(tr.BigBirdForMaskedLM(tr.BigBirdConfig(
            attention_type="original_full", **lm))),
        "xlnet": lambda: lm_of(tr.XLNetLMHeadModel(tr.XLNetConfig(
            vocab_size=100, d_model=32, n_layer=2, n_head=4, d_inner=64))),
        "led": lambda: lm_of(tr.LEDForConditionalGeneration(tr.LEDConfig(
            vocab_size=100, d_model=32, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
            decoder_ffn_dim=64, attention_window=4, max_encoder_position_embeddings=32,
            max_decoder_position_embeddings=32))),
        "data2vec_vision": lambda: (tr.Data2VecVisionModel(tr.Data2VecVisionConfig(
            image_size=32, patch_size=8, use_relative_position_bias=True, **sizes)),
            {"pixel_values": torch.randn(2, 3, 32, 32)}),
    }


def _hybrids(tr: Any, ids: Callable[[], torch.Tensor], lm: dict[str, int]
             ) -> dict[str, Callable[[], tuple[nn.Module, Inputs]]]:
    """Added in the seventh session: hybrid decoders that mix attention with Mamba2 layers
    (Bamba, Falcon-H1, Granite 4.0-H, Zamba2, Nemotron-H), with Mamba layers (Jamba), with
    gated DeltaNet (Qwen3-Next) and with short convolutions (LFM2)."""
    kv = {"num_key_value_heads": 2, **lm}
    ssm2 = {"mamba_d_state": 8, "mamba_n_heads": 8, "mamba_d_head": 8, "mamba_n_groups": 1,
            "mamba_chunk_size": 8, "mamba_expand": 2}
    experts = {"num_experts_per_tok": 2}

    def lm_of(model: nn.Module) -> tuple[nn.Module, Inputs]:
        return model, {"input_ids": ids()}

    return {
        "bamba": lambda: lm_of(tr.BambaForCausalLM(tr.BambaConfig(
            attn_layer_indices=[1], **ssm2, **kv))),
        "falcon_h1": lambda: lm_of(tr.FalconH1ForCausalLM(tr.FalconH1Config(
            head_dim=8, mamba_d_ssm=None, **ssm2, **kv))),
        "granitemoehybrid": lambda: lm_of(tr.GraniteMoeHybridForCausalLM(
            tr.GraniteMoeHybridConfig(layer_types=["mamba", "attention"], num_local_experts=4,
                                      shared_intermediate_size=64, **experts, **ssm2, **kv))),
        "zamba2": lambda: lm_of(tr.Zamba2ForCausalLM(tr.Zamba2Config(
            mamba_d_state=8, mamba_headdim=8, n_mamba_heads=8, mamba_ngroups=1, chunk_size=8,
            mamba_expand=2, layers_block_type=["mamba", "hybrid"], num_mem_blocks=1, **kv))),
        "nemotron_h": lambda: lm_of(tr.NemotronHForCausalLM(tr.NemotronHConfig(
            hybrid_override_pattern="M*-", ssm_state_size=8, mamba_num_heads=8,
            mamba_head_dim=8, n_groups=1, chunk_size=8, expand=2, head_dim=8,
            **{**kv, "num_hidden_layers": 3}))),
        "jamba": lambda: lm_of(tr.JambaForCausalLM(tr.JambaConfig(
            attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
            expert_layer_offset=1, num_experts=4, mamba_d_state=8, mamba_expand=2, **kv))),
        "qwen3_next": lambda: lm_of(tr.Qwen3NextForCausalLM(tr.Qwen3NextConfig(
            layer_types=["linear_attention", "full_attention"], head_dim=8,
            linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=8,
            linear_value_head_dim=8, num_experts=4, moe_intermediate_size=16,
            shared_expert_intermediate_size=16, **experts, **kv))),
        "lfm2": lambda: lm_of(tr.Lfm2ForCausalLM(tr.Lfm2Config(
            layer_types=["conv", "full_attention"], **kv))),
    }


def _recent(tr: Any, ids: Callable[[], torch.Tensor], lm: dict[str, int]
            ) -> dict[str, Callable[[], tuple[nn.Module, Inputs]]]:
    """Added in the eighth session: decoders released in 2025-2026 (Qwen3.5 and Kimi Linear
    with linear-attention layers, MiniMax, GPT-OSS, Llama 4, GLM-4.5, Gemma 3n, ...), each
    built by ``AutoModelForCausalLM`` from its config type, and Mamba2 with two groups of B
    and C."""
    kv = {"num_key_value_heads": 2, "head_dim": 8, **lm}
    moe = {"num_experts": 4, "num_local_experts": 4, "num_experts_per_tok": 2,
           "moe_intermediate_size": 16}
    mla = {"kv_lora_rank": 8, "q_lora_rank": 8, "qk_rope_head_dim": 4, "qk_nope_head_dim": 4,
           "v_head_dim": 8}
    linear = {"layer_types": ["linear_attention", "full_attention"]}
    delta = {"linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 8,
             "linear_value_head_dim": 8, **linear}
    first_dense = {"first_k_dense_replace": 1, "n_routed_experts": 4, "n_shared_experts": 1}
    extra: dict[str, dict[str, Any]] = {
        "qwen3_5_text": delta, "qwen3_5_moe_text": {
            "shared_expert_intermediate_size": 16, **moe, **delta},
        "kimi_linear": {"pad_token_id": 0, "mlp_layer_types": ["dense", "sparse"],
                        "linear_head_dim": 8, "linear_num_heads": 4, **mla, **moe, **linear},
        "minimax": {**moe, **linear}, "minimax_m2": moe,
        "gpt_oss": {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 4,
                    **moe},
        "llama4_text": {"intermediate_size_mlp": 64, **moe},
        "glm4_moe": {**first_dense, **moe}, "dots1": {**first_dense, **moe},
        "deepseek_v2": {"n_routed_experts": 4, **mla, **moe},
        "hunyuan_v1_moe": moe, "ernie4_5_moe": moe, "granitemoe": moe, "afmoe": moe,
        "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1, **moe},
        "gemma3n_text": {"layer_types": ["sliding_attention", "full_attention"],
                         "sliding_window": 4, "vocab_size_per_layer_input": 100,
                         "hidden_size_per_layer_input": 8, "laurel_rank": 4,
                         "activation_sparsity_pattern": [0.0, 0.0], "num_kv_shared_layers": 0,
                         "altup_num_inputs": 2},
        "glm4": {"pad_token_id": 0}, **{name: {} for name in (
            "olmo3", "exaone4", "seed_oss", "hunyuan_v1_dense", "apertus", "ernie4_5", "arcee",
            "ministral", "cohere2", "bitnet", "doge", "vaultgemma", "jais2")},
    }

    def build(model_type: str) -> tuple[nn.Module, Inputs]:
        config = tr.AutoConfig.for_model(model_type, **{**kv, **extra[model_type]})
        return tr.AutoModelForCausalLM.from_config(config), {"input_ids": ids()}

    def mamba2_groups() -> tuple[nn.Module, Inputs]:
        return tr.Mamba2ForCausalLM(tr.Mamba2Config(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, state_size=8, num_heads=8,
            head_dim=8, n_groups=2, chunk_size=8, expand=2)), {"input_ids": ids()}

    cases: dict[str, Callable[[], tuple[nn.Module, Inputs]]] = {
        name.removesuffix("_text"): functools.partial(build, name) for name in extra}
    cases["mamba2_groups"] = mamba2_groups
    return cases


def _ninth(tr: Any, ids: Callable[[], torch.Tensor], sizes: dict[str, int]
           ) -> dict[str, Callable[[], tuple[nn.Module, Inputs]]]:
    """Added in the ninth session: task heads and families whose ops were not mapped before
    (FFT token mixing, pixel-shuffle upsampling, split parts sized by the input width,
    ``einsum`` with ``...``), detection and segmentation heads on small backbones, and
    time-series and audio-codec models."""

    def pixels(size: int = 32) -> torch.Tensor:
        return torch.randn(2, 3, size, size)

    resnet = {"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1],
              "out_features": ["stage2", "stage3", "stage4"]}
    detr = {"use_timm_backbone": False, "use_pretrained_backbone": False, "backbone": None,
            "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
            "encoder_attention_heads": 4, "decoder_attention_heads": 4,
            "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_queries": 8, "num_labels": 5}
    series = {"prediction_length": 8, "context_length": 16, "lags_sequence": [1, 2],
              "d_model": 16, "encoder_layers": 1, "decoder_layers": 1,
              "encoder_attention_heads": 2, "decoder_attention_heads": 2,
              "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_time_features": 1}

    def series_inputs() -> Inputs:
        past = 16 + 2  # context_length + the largest lag
        return {"past_values": torch.randn(2, past), "past_time_features": torch.randn(2, past, 1),
                "past_observed_mask": torch.ones(2, past), "future_values": torch.randn(2, 8),
                "future_time_features": torch.randn(2, 8, 1)}

    return {
        "fnet": lambda: (tr.FNetForSequenceClassification(tr.FNetConfig(
            vocab_size=100, max_position_embeddings=32, num_labels=3, **sizes)),
            {"input_ids": ids()}),
        "swin2sr": lambda: (tr.Swin2SRForImageSuperResolution(tr.Swin2SRConfig(
            image_size=16, patch_size=1, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
            window_size=4, upscale=2, upsampler="pixelshuffle")),
            {"pixel_values": pixels(16)}),
        "focalnet": lambda: (tr.FocalNetForImageClassification(tr.FocalNetConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], focal_levels=[2, 2],
            focal_windows=[3, 3], num_labels=5)), {"pixel_values": pixels()}),
        "owlvit": lambda: (tr.OwlViTForObjectDetection(tr.OwlViTConfig(
            text_config={"vocab_size": 100, "max_position_embeddings": 16, **sizes},
            vision_config={"image_size": 32, "patch_size": 8, **sizes}, projection_dim=32)),
            {"pixel_values": pixels(), "input_ids": ids()}),
        "vit_mae": lambda: (tr.ViTMAEForPreTraining(tr.ViTMAEConfig(
            image_size=32, patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2, decoder_intermediate_size=32, **sizes)),
            {"pixel_values": pixels(), "noise": torch.rand(2, 16)}),
        "detr": lambda: (tr.DetrForObjectDetection(tr.DetrConfig(
            backbone_config=tr.ResNetConfig(**resnet), **detr)), {"pixel_values": pixels(64)}),
        "rt_detr": lambda: (tr.RTDetrForObjectDetection(tr.RTDetrConfig(
            backbone_config=tr.RTDetrResNetConfig(
                embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                out_features=["stage2", "stage3", "stage4"]),
            encoder_hidden_dim=32, encoder_in_channels=[32, 64, 128], d_model=32,
            encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8,
            num_labels=5, decoder_n_points=2, num_feature_levels=3,
            decoder_in_channels=[32, 32, 32])), {"pixel_values": pixels(64)}),
        "upernet": lambda: (tr.UperNetForSemanticSegmentation(tr.UperNetConfig(
            backbone_config=tr.ConvNextConfig(
                hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                out_features=["stage1", "stage2", "stage3", "stage4"]),
            hidden_size=16, num_labels=4, use_auxiliary_head=False)),
            {"pixel_values": pixels(64)}),
        "sam_vision": lambda: (tr.SamVisionModel(tr.SamVisionConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=64,
            patch_size=16, output_channels=16, window_size=2, global_attn_indexes=[1],
            mlp_dim=64)), {"pixel_values": pixels(64)}),
        "videomae": lambda: (tr.VideoMAEForVideoClassification(tr.VideoMAEConfig(
            image_size=32, patch_size=8, num_frames=4, tubelet_size=2, num_labels=3, **sizes)),
            {"pixel_values": torch.randn(2, 4, 3, 32, 32)}),
        "patchtst": lambda: (tr.PatchTSTForPrediction(tr.PatchTSTConfig(
            num_input_channels=3, context_length=32, patch_length=8, patch_stride=8,
            d_model=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
            prediction_length=8)), {"past_values": torch.randn(2, 32, 3)}),
        "autoformer": lambda: (tr.AutoformerModel(tr.AutoformerConfig(**series)),
                               series_inputs()),
        "informer": lambda: (tr.InformerModel(tr.InformerConfig(**series)), series_inputs()),
        "encodec": lambda: (tr.EncodecModel(tr.EncodecConfig(
            num_filters=4, hidden_size=16, upsampling_ratios=[2, 2], codebook_size=16,
            num_lstm_layers=1)), {"input_values": torch.randn(2, 1, 64)}),
        "esm": lambda: (tr.EsmForMaskedLM(tr.EsmConfig(
            vocab_size=33, max_position_embeddings=40, pad_token_id=1, **sizes)),
            {"input_ids": torch.randint(3, 33, (2, 8))}),
        "canine": lambda: (tr.CanineForSequenceClassification(tr.CanineConfig(
            num_hash_buckets=64, downsampling_rate=2, num_labels=3, **sizes)),
            {"input_ids": torch.randint(3, 500, (2, 16))}),
    }


def _entry(name: str, make: Callable[[], tuple[nn.Module, Inputs]],
           dtype: torch.dtype = torch.float32) -> ZooEntry:
    built: dict[str, tuple[nn.Module, Inputs]] = {}

    def pair() -> tuple[nn.Module, Inputs]:
        if "pair" not in built:
            torch.manual_seed(0)
            model, inputs = make()
            built["pair"] = (model.to(dtype), {
                k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()})
        return built["pair"]

    return ZooEntry(name, lambda: pair()[0], lambda: pair()[1], False, "transformers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="")
    parser.add_argument("--timeout", type=int, default=60)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="cast each model and its float inputs (bfloat16: as LLMs ship)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGALRM, _timeout)
    cases = _cases()
    names = [n for n in args.models.split(",") if n] or list(cases)
    print(f"{'model':<12} {'prunekit':<70} kept")
    succeeded, unrunnable = 0, 0
    for name in names:
        entry = _entry(name, cases[name], getattr(torch, args.dtype))
        params = sum(p.numel() for p in entry.build().parameters())
        try:
            result: dict[str, Any] = attempt(run_prunekit, entry, 1, args.timeout)
        except Exception as exc:  # the unpruned model's own forward (FFT in bfloat16)
            unrunnable += 1
            why = f"n/a, the model itself fails: {type(exc).__name__}: {exc}"
            print(f"{name:<12} {why[:68]:<70} nan")
            continue
        succeeded += bool(result["ok"])
        kept = (sum(p.numel() for p in result["model"].parameters()) / params
                if result["ok"] else float("nan"))
        print(f"{name:<12} {'ok' if result['ok'] else result['why'][:68]:<70} {kept:.3f}")
    ran = len(names) - unrunnable
    note = f" ({unrunnable} not run: the unpruned model fails in {args.dtype})" \
        if unrunnable else ""
    print(f"success: prunekit {succeeded}/{ran}{note}")

if __name__ == "__main__":
    main()
