"""The pruning-test zoo keeps its promises: seeded, deterministic, small, right output shapes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from .zoo import BY_NAME, ZOO, ZooEntry, call

# Expected output per entry: a shape, a list of shapes (the model returns a tuple) or a dict
# of shapes. Every example input has batch size 2.
Expected = tuple[int, ...] | list[tuple[int, ...]] | dict[str, tuple[int, ...]]
EXPECTED: dict[str, Expected] = {
    "lenet5": (2, 10),
    "vgg_bn": (2, 10),
    "resnet_basic": (2, 10),
    "resnet_bottleneck": (2, 10),
    "resnext": (2, 10),
    "mobilenet_v2": (2, 10),
    "mobilenet_v3": (2, 10),
    "densenet": (2, 10),
    "inception": (2, 10),
    "shufflenet_v2": (2, 10),
    "unet": (2, 3, 32, 32),
    "fpn_tuple": [(2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4)],
    "fcos_dict": {"cls_logits": (2, 336, 5), "bbox_regression": (2, 336, 4)},
    "vit": (2, 10),
    "swin": (2, 10),
    "convnext": (2, 10),
    "mlp_mixer": (2, 10),
    "lstm_classifier": (2, 4),
    "gru_bidirectional": (2, 4),
    "transformer_encoder": (2, 4),
    "gpt": (2, 16, 128),
    "llama": (2, 16, 128),
    "tied_lm": (2, 16, 96),
    "dict_text_image": {"text_logits": (2, 5), "image_logits": (2, 5), "logits": (2, 5)},
    "frozen_backbone": (2, 10),
    "audio_m5": (2, 10),
    "audio_spectrogram": (2, 12),
    "conv3d_video": (2, 10),
    "two_input_film": (2, 10),
    "control_flow": (2, 10),
    "split_glu": (2, 10),
    "yolo_detect": [(2, 10, 80), [(2, 38, 8, 8), (2, 38, 4, 4)]],
}

NAMES = [entry.name for entry in ZOO]



def _check_structure(out: object, expected: Expected, where: str = "output") -> None:
    if isinstance(expected, dict):
        assert isinstance(out, dict), f"{where}: expected dict, got {type(out).__name__}"
        assert list(out) == list(expected), f"{where}: keys {list(out)} != {list(expected)}"
        for key, shape in expected.items():
            _check_structure(out[key], shape, f"{where}[{key!r}]")
    elif isinstance(expected, list):
        assert isinstance(out, tuple), f"{where}: expected tuple, got {type(out).__name__}"
        assert len(out) == len(expected), f"{where}: {len(out)} items, expected {len(expected)}"
        for i, shape in enumerate(expected):
            _check_structure(out[i], shape, f"{where}[{i}]")
    else:
        assert isinstance(out, Tensor), f"{where}: expected Tensor, got {type(out).__name__}"
        assert tuple(out.shape) == expected, f"{where}: shape {tuple(out.shape)} != {expected}"
        assert torch.isfinite(out).all(), f"{where}: non-finite values"


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied ones


def test_zoo_is_large_with_unique_names() -> None:
    assert len(ZOO) >= 25
    assert len(set(NAMES)) == len(NAMES)
    assert list(BY_NAME) == NAMES
    assert all(BY_NAME[e.name] is e for e in ZOO)
    assert set(EXPECTED) == set(NAMES), "every entry needs an expected output structure"


@pytest.mark.parametrize("name", NAMES)
def test_entry_runs_deterministically_with_expected_output(name: str) -> None:
    entry: ZooEntry = BY_NAME[name]
    model = entry.build().eval()
    inputs = entry.example_inputs()
    with torch.no_grad():
        first = call(model, inputs)
        second = call(model, inputs)
    _check_structure(first, EXPECTED[name])
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert entry.notes, f"{name}: notes must say which couplings it exercises"


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_seeded_small_and_leaves_global_rng_alone(name: str) -> None:
    entry = BY_NAME[name]
    rng_before = torch.get_rng_state()
    a, b = entry.build(), entry.build()
    inputs_a, inputs_b = entry.example_inputs(), entry.example_inputs()
    assert torch.equal(torch.get_rng_state(), rng_before)
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(inputs_a, inputs_b, rtol=0, atol=0)
    assert 0 < _params(a) < 1_000_000


def test_most_entries_are_under_200k_parameters() -> None:
    small = [e.name for e in ZOO if _params(e.build()) < 200_000]
    assert len(small) >= 0.8 * len(ZOO)


def test_call_dispatches_tuple_and_dict_inputs() -> None:
    film = BY_NAME["two_input_film"]
    assert isinstance(film.example_inputs(), tuple)
    multimodal = BY_NAME["dict_text_image"].build().eval()
    inputs = BY_NAME["dict_text_image"].example_inputs()
    assert isinstance(inputs, dict)
    with torch.no_grad():
        text_only = call(multimodal, {"input_ids": inputs["input_ids"]})
    assert isinstance(text_only, dict)
    assert list(text_only) == ["text_logits"]


def test_tied_lm_shares_embedding_and_head() -> None:
    model: Any = BY_NAME["tied_lm"].build()
    assert model.lm_head.weight is model.wte.weight


def test_frozen_backbone_mixes_frozen_and_trainable_parameters() -> None:
    model: Any = BY_NAME["frozen_backbone"].build()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("backbone.") for n in frozen)
    assert any(p.requires_grad for p in model.prior.parameters())


def _attention_modules(model: nn.Module) -> list[Any]:
    """Modules exposing ``num_heads``/``head_dim`` (typed Any: the attributes are dynamic)."""
    return [m for m in model.modules() if hasattr(m, "num_heads") and hasattr(m, "head_dim")]


@pytest.mark.parametrize("name", ["vit", "swin", "gpt", "tied_lm", "llama"])
def test_attention_attributes_are_read_at_run_time(name: str) -> None:
    """A pruner that removes heads must update these attributes: a stale one breaks forward."""
    entry = BY_NAME[name]
    model = entry.build().eval()
    attentions = _attention_modules(model)
    assert attentions
    for attn in attentions:
        width = getattr(attn, "embed_dim", getattr(attn, "hidden_size", None))
        assert attn.head_dim * attn.num_heads == width
    if name == "vit":
        return  # nn.MultiheadAttention's own attributes; torch owns how it reads them
    attentions[0].num_heads = attentions[0].num_heads // 2
    with pytest.raises(RuntimeError), torch.no_grad():
        call(model, entry.example_inputs())


def test_llama_uses_grouped_query_attention() -> None:
    model = BY_NAME["llama"].build()
    for attn in _attention_modules(model):
        assert attn.num_key_value_heads < attn.num_heads
        assert attn.k_proj.out_features == attn.num_key_value_heads * attn.head_dim
