"""Whole-head pruning of ``nn.MultiheadAttention`` through ``PrunedMultiheadAttention``: the
drop-in computes what torch's module does, pruning heads equals zeroing their output
columns, and the swap is recorded in the plan, replayed on load and exported to ONNX."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.structured.test_equivalence import _complement, _zero_removed_inputs
from tests.structured.zoo import BY_NAME, call
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.structured import PrunedMultiheadAttention, analyze, apply_plan, prune


def _mha_params(m: nn.MultiheadAttention) -> int:
    return sum(p.numel() for p in m.parameters())


# --- the drop-in against torch's module --------------------------------------------------


def _call_kwargs(n: int, tgt: int, src: int) -> list[dict[str, Any]]:
    torch.manual_seed(1)
    padding = torch.rand(n, src) > 0.7
    padding[:, 0] = False
    blocked = torch.rand(tgt, src) > 0.8
    blocked[:, 0] = False
    causal = torch.triu(torch.ones(tgt, src, dtype=torch.bool), 1)
    return [
        {}, {"key_padding_mask": padding}, {"attn_mask": blocked},
        {"attn_mask": torch.randn(n * 4, tgt, src)},
        {"key_padding_mask": padding, "attn_mask": blocked, "need_weights": False},
        {"average_attn_weights": False, "key_padding_mask": padding},
        {"key_padding_mask": padding.float() * -1e9, "attn_mask": blocked.float() * -1e9},
        {"attn_mask": causal, "is_causal": True, "need_weights": False},
        {"attn_mask": causal, "is_causal": True},
    ]


@pytest.mark.parametrize(("batch_first", "bias", "bias_kv", "zero_attn", "kdim"),
                         [(True, True, False, False, None), (False, True, False, False, None),
                          (True, False, True, False, None), (False, True, False, True, 12),
                          (True, True, True, True, 12)])
def test_drop_in_matches_torch(batch_first: bool, bias: bool, bias_kv: bool, zero_attn: bool,
                               kdim: int | None) -> None:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(16, 4, 0.0, bias, bias_kv, zero_attn, kdim, kdim, batch_first)
    new = PrunedMultiheadAttention.from_module(ref)
    n, tgt, src = 2, 5, 5
    q = torch.randn(n, tgt, 16) if batch_first else torch.randn(tgt, n, 16)
    mem = torch.randn(n, src, kdim or 16) if batch_first else torch.randn(src, n, kdim or 16)
    calls = [(mem, mem), (mem, mem + 1)] if kdim else [(q, q), (mem, mem), (mem, mem + 1)]
    for train, (key, value), kwargs in itertools.product((False, True), calls,
                                                         _call_kwargs(n, tgt, src)):
        ref.train(train), new.train(train)
        if kwargs.get("is_causal") and (bias_kv or zero_attn):
            continue  # the extra key column makes the causal mask non-square
        want, got = ref(q, key, value, **kwargs), new(q, key, value, **kwargs)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
        if want[1] is None:
            assert got[1] is None
        else:
            torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-6)


def test_drop_in_matches_torch_unbatched_dropout_and_state_dict() -> None:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(16, 4, dropout=0.3)
    new = PrunedMultiheadAttention.from_module(ref)
    assert list(new.state_dict()) == list(ref.state_dict())
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(new.eval()(x, x, x)[0], ref.eval()(x, x, x)[0])
    ref.train(), new.train()
    for need_weights in (True, False):
        torch.manual_seed(7)
        want = ref(x, x, x, need_weights=need_weights)[0]
        torch.manual_seed(7)
        got = new(x, x, x, need_weights=need_weights)[0]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_drop_in_constructor_sizes_heads_apart_from_width() -> None:
    mha = PrunedMultiheadAttention(16, 3, head_dim=4, kdim=8, vdim=6)
    assert mha.q_proj_weight.shape == (12, 16) and mha.k_proj_weight.shape == (12, 8)
    assert mha.v_proj_weight.shape == (12, 6) and mha.out_proj.weight.shape == (16, 12)
    x, mem, val = torch.randn(5, 2, 16), torch.randn(7, 2, 8), torch.randn(7, 2, 6)
    out, weights = mha(x, mem, val)
    assert out.shape == (5, 2, 16) and weights is not None and weights.shape == (2, 5, 7)
    assert not mha._qkv_same_embed_dim  # keeps torch's fused paths away
    assert PrunedMultiheadAttention(16, 4)._qkv_same_embed_dim


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_drop_in_errors() -> None:
    with pytest.raises(ValueError, match="embed_dim=10 is not divisible by num_heads=3"):
        PrunedMultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="head_dim=0 must be a positive int"):
        PrunedMultiheadAttention(16, 2, head_dim=0)
    with pytest.raises(TypeError, match=r"needs an nn\.MultiheadAttention, got Linear"):
        PrunedMultiheadAttention.from_module(nn.Linear(2, 2))  # type: ignore[arg-type]
    mha = PrunedMultiheadAttention(16, 2, batch_first=True)
    nested = torch.nested.nested_tensor([torch.randn(3, 16), torch.randn(2, 16)])
    with pytest.raises(ValueError, match="NestedTensor only for batch-first self-attention"):
        mha(nested, nested, nested, attn_mask=torch.zeros(3, 3, dtype=torch.bool))


def _prune_heads(mha: PrunedMultiheadAttention, keep: list[int]) -> PrunedMultiheadAttention:
    plan = {"format": "prunekit.structured.plan/1",
            "modules": {"attn": {"type": "PrunedMultiheadAttention", "keep": {"heads": keep}}}}
    holder = nn.Module()
    holder.attn = copy.deepcopy(mha)
    apply_plan(holder, plan)
    return holder.attn  # type: ignore[return-value]


def _zero_heads(mha: nn.MultiheadAttention, keep: list[int]) -> nn.MultiheadAttention:
    zeroed = copy.deepcopy(mha)
    with torch.no_grad():
        columns = zeroed.out_proj.weight.view(mha.embed_dim, mha.num_heads, -1)
        columns[:, _complement(keep, mha.num_heads)] = 0
    return zeroed


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_transformer_encoder_fast_and_nested_paths_with_fewer_heads() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2).eval()  # nested tensors from a padding mask
    zeroed = copy.deepcopy(encoder)
    for pruned_layer, zeroed_layer in zip(encoder.layers, zeroed.layers, strict=True):
        drop_in = PrunedMultiheadAttention.from_module(pruned_layer.self_attn)
        pruned_layer.self_attn = _prune_heads(drop_in, [0, 2])
        zeroed_layer.self_attn = _zero_heads(zeroed_layer.self_attn, [0, 2])
    x = torch.randn(2, 5, 16)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        for kwargs in ({}, {"src_key_padding_mask": padding},
                       {"mask": nn.Transformer.generate_square_subsequent_mask(5)}):
            got, want = encoder(x, **kwargs), zeroed(x, **kwargs)  # zeroed: torch's fused path
            real = ~padding if kwargs.get("src_key_padding_mask") is not None else \
                torch.ones(2, 5, dtype=torch.bool)
            torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
    encoder.train()  # the slow path, with gradients
    out = encoder(x, src_key_padding_mask=padding)
    out.sum().backward()
    assert encoder.layers[0].self_attn.in_proj_weight.grad.shape == (24, 16)


def test_3d_mask_for_the_original_heads_selects_the_kept_ones() -> None:
    torch.manual_seed(0)
    mha = PrunedMultiheadAttention(16, 4)
    pruned = _prune_heads(_prune_heads(mha, [0, 1, 3]), [0, 2])  # composes to heads 0, 3
    assert pruned.num_heads == 2 and pruned.head_origin == (4, (0, 3))
    x, mask = torch.randn(5, 2, 16), torch.randn(2 * 4, 5, 5)
    want = _zero_heads(mha, [0, 3])(x, x, x, attn_mask=mask)[0]
    torch.testing.assert_close(pruned(x, x, x, attn_mask=mask)[0], want, rtol=1e-5,
                               atol=1e-6)
    small = mask.view(2, 4, 5, 5)[:, [0, 3]].reshape(4, 5, 5)  # already the kept heads
    torch.testing.assert_close(pruned(x, x, x, attn_mask=small)[0], want, rtol=1e-5,
                               atol=1e-6)


# --- pruning through prunekit.prune -------------------------------------------------------


class Wrapped(nn.Module):
    """One attention whose input and output are the model's: only its heads can go."""

    def __init__(self, batch_first: bool = True, bias_kv: bool = False) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=batch_first, add_bias_kv=bias_kv)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_heads_leave_whole_and_params_drop_per_head() -> None:
    torch.manual_seed(0)
    model, x = Wrapped().eval(), torch.randn(2, 6, 32)
    result = prune(model, x, ratio=0.5)
    attn = result.model.attn
    assert isinstance(attn, PrunedMultiheadAttention)
    assert (attn.num_heads, attn.head_dim, attn.embed_dim) == (2, 8, 32)
    per_head = 3 * (8 * 32 + 8) + 32 * 8  # q, k, v rows and biases, out_proj columns
    assert _mha_params(model.attn) - _mha_params(attn) == 2 * per_head
    assert result.plan["modules"]["attn"]["swap"] == "PrunedMultiheadAttention"
    assert isinstance(model.attn, nn.MultiheadAttention) and model.attn.num_heads == 4
    with torch.no_grad():
        assert result.model(x).shape == (2, 6, 32)


def test_heads_scores_read_each_heads_tensors() -> None:
    torch.manual_seed(0)
    model = Wrapped().eval()
    with torch.no_grad():
        model.attn.out_proj.weight[:, 8:16] *= 100  # head 1 is the loudest
        model.attn.in_proj_bias.copy_(torch.randn(96))
    found = analyze(model, torch.randn(1, 3, 32), importance="l1")
    (group,) = found.graph.groups
    (scores,) = found.scores
    mha = model.attn
    w, b, o = mha.in_proj_weight.detach(), mha.in_proj_bias.detach(), mha.out_proj.weight
    expected = torch.stack([
        sum(w[p * 32 + h * 8:p * 32 + (h + 1) * 8].abs().sum()
            + b[p * 32 + h * 8:p * 32 + (h + 1) * 8].abs().sum() for p in range(3))
        + o.detach()[:, h * 8:(h + 1) * 8].abs().sum() for h in range(4)])
    assert group.size == 4
    torch.testing.assert_close(scores, expected)
    result = prune(model, torch.randn(1, 3, 32), ratio=0.75, importance="l1")
    assert result.plan["modules"]["attn"]["keep"]["heads"] == [1]


@pytest.mark.parametrize(("ratio", "round_to", "heads"),
                         [(0.5, 8, 2), (0.5, 16, 2), (0.75, 16, 2), (0.75, 8, 1), (0.5, 32, 4)])
def test_round_to_counts_each_head_as_head_dim_channels(ratio: float, round_to: int,
                                                        heads: int) -> None:
    # 4 heads of 8 channels: round_to=16 needs an even head count, 32 all four
    torch.manual_seed(0)
    model, x = Wrapped().eval(), torch.randn(2, 6, 32)
    attn = prune(model, x, ratio=ratio, round_to=round_to).model.attn
    assert (attn.num_heads, attn.head_dim) == (heads, 8)  # whole heads, never thinner ones


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", ["vit", "transformer_encoder"])
def test_zoo_attention_loses_whole_heads(name: str, ratio: float) -> None:
    entry = BY_NAME[name]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=ratio)
    heads = 3 if ratio == 0.3 else 2
    olds = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    news = [m for m in result.model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(news) == len(olds) == 2
    for old, new in zip(olds, news, strict=True):
        assert isinstance(new, PrunedMultiheadAttention)
        assert new.num_heads == heads and new.head_dim == old.head_dim == 16
        inner, width = heads * 16, new.embed_dim
        assert _mha_params(new) == 4 * inner * width + 3 * inner + width
        assert new.in_proj_weight.shape == (3 * inner, width)
    with torch.no_grad():
        assert call(result.model, inputs).shape == call(model, inputs).shape
    json.dumps(result.plan)  # plain JSON


@pytest.mark.parametrize("name", ["vit", "transformer_encoder"])
def test_ratio_zero_changes_nothing(name: str) -> None:
    entry = BY_NAME[name]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.0)
    assert not result.plan["modules"]
    assert all(type(m) is nn.MultiheadAttention
               for m in result.model.modules() if isinstance(m, nn.MultiheadAttention))
    with torch.no_grad():
        assert torch.equal(call(result.model, inputs), call(model, inputs))


class AttentionMLP(nn.Module):
    """Linear → attention (optionally cross, kdim ≠ embed_dim) → Linear, no norm: pruning
    equals zeroing the removed embed channels' columns and the removed heads' outputs."""

    def __init__(self, batch_first: bool, cross: bool, bias_kv: bool) -> None:
        super().__init__()
        self.batch_first, self.cross = batch_first, cross
        self.inp = nn.Linear(8, 32)
        self.mem = nn.Linear(8, 24) if cross else None
        self.attn = nn.MultiheadAttention(32, 4, batch_first=batch_first, add_bias_kv=bias_kv,
                                          kdim=24 if cross else None,
                                          vdim=24 if cross else None)
        self.out = nn.Linear(32, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = x if self.batch_first else x.transpose(0, 1)
        h = self.inp(x)
        kv = self.mem(x) if self.mem is not None else h
        return self.out(torch.relu(self.attn(h, kv, kv)[0]))


def _zero_removed(model: AttentionMLP, plan: dict[str, Any]) -> nn.Module:
    zeroed: Any = _zero_removed_inputs(model, plan)  # Linear inputs
    keep = plan["modules"]["attn"]["keep"]
    attn = zeroed.attn
    with torch.no_grad():
        if "heads" in keep:
            zeroed.attn = _zero_heads(attn, keep["heads"])
            attn = zeroed.attn
        if "embed" in keep:
            removed = _complement(keep["embed"], 32)
            weight = attn.in_proj_weight if attn.in_proj_weight is not None \
                else attn.q_proj_weight
            weight[:, removed] = 0
        for dim, name in (("kdim", "k_proj_weight"), ("vdim", "v_proj_weight")):
            if dim in keep:
                getattr(attn, name)[:, _complement(keep[dim], 24)] = 0
    return zeroed


@pytest.mark.parametrize(("batch_first", "cross", "bias_kv"),
                         [(True, False, False), (False, False, True), (True, True, False),
                          (False, True, True)])
def test_pruning_equals_zeroing(batch_first: bool, cross: bool, bias_kv: bool) -> None:
    torch.manual_seed(0)
    model, x = AttentionMLP(batch_first, cross, bias_kv).eval(), torch.randn(2, 6, 8)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    keep = result.plan["modules"]["attn"]["keep"]
    assert len(keep["heads"]) == 2 and len(keep["embed"]) == 16
    if cross:
        assert len(keep["kdim"]) == 12 and keep["kdim"] == keep["vdim"]
        assert result.model.attn.kdim == 12
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), _zero_removed(model, result.plan)(x),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["vit", "transformer_encoder"])
def test_save_load_rebuilds_the_drop_in(name: str, tmp_path: Path) -> None:
    entry = BY_NAME[name]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.5)
    pk.save(result, tmp_path / "out")
    loaded = pk.load(tmp_path / "out", entry.build()).eval()
    kinds = {type(m).__name__ for m in loaded.modules() if isinstance(m, nn.MultiheadAttention)}
    assert kinds == {"PrunedMultiheadAttention"}
    with torch.no_grad():
        assert torch.equal(call(loaded, inputs), call(result.model, inputs))


def test_cross_attention_with_kdim_saves_and_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = AttentionMLP(True, True, False).eval(), torch.randn(2, 6, 8)
    result = prune(model, x, ratio=0.5)
    pk.save(result, tmp_path / "cross")
    torch.manual_seed(1)
    loaded = pk.load(tmp_path / "cross", AttentionMLP(True, True, False)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


def test_pruning_twice_cuts_the_drop_in_in_place() -> None:
    torch.manual_seed(0)
    model, x = Wrapped(batch_first=False, bias_kv=True).eval(), torch.randn(6, 2, 32)
    first = prune(model, x, ratio=0.5)
    second = prune(first.model, x, ratio=0.5)
    attn = second.model.attn
    assert "swap" not in second.plan["modules"]["attn"]
    assert attn.num_heads == 1 and attn.bias_k.shape == (1, 1, 8)
    assert attn.head_origin is not None and attn.head_origin[0] == 4
    with torch.no_grad():
        assert second.model(x).shape == (6, 2, 32)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_vit_with_fewer_heads_exports_to_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    entry = BY_NAME["vit"]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.5)
    assert result.model.blocks[0].self_attention.num_heads == 2
    path = pk.export_onnx(result.model, inputs, tmp_path / "vit.onnx", exporter="torchscript",
                          atol=1e-5)  # checks ONNX Runtime against PyTorch
    assert path.exists()


# --- what cannot be swapped, and plans that do not fit ----------------------------------


def test_bare_attention_as_the_model_keeps_its_heads() -> None:
    model = nn.MultiheadAttention(16, 4)
    found = analyze(model, (torch.randn(3, 1, 16),) * 3)
    assert not found.graph.groups
    assert any("needs a parent module" in r for r in found.graph.blocked.values())


class SubclassedAttention(nn.MultiheadAttention):
    """Adds an attribute, keeps torch's forward: cut the old way (channel j of every head)."""

    tag = "mine"


def test_subclass_keeps_heads_and_prunes_width_per_head() -> None:
    torch.manual_seed(0)
    model = Wrapped()
    model.attn = SubclassedAttention(32, 4, batch_first=True)
    inner = nn.Sequential(nn.Linear(8, 32), model, nn.Linear(32, 4)).eval()
    x = torch.randn(2, 5, 8)
    result = prune(inner, x, ratio=0.5)
    attn = result.model[1].attn
    assert type(attn) is SubclassedAttention
    assert (attn.num_heads, attn.head_dim, attn.embed_dim) == (4, 4, 16)
    with torch.no_grad():
        assert result.model(x).shape == (2, 5, 4)


def test_plan_without_the_swap_cuts_torch_attention_the_old_way() -> None:
    model = Wrapped()
    keep = [h * 8 + j for h in range(4) for j in (0, 3, 5, 6)]  # as plans before heads
    plan = {"format": "prunekit.structured.plan/1",
            "modules": {"attn": {"type": "MultiheadAttention", "keep": {"embed": keep}}}}
    apply_plan(model, plan)
    assert type(model.attn) is nn.MultiheadAttention
    assert (model.attn.num_heads, model.attn.head_dim, model.attn.embed_dim) == (4, 4, 16)
    assert model(torch.randn(2, 3, 16)).shape == (2, 3, 16)


def test_plans_that_do_not_fit_name_the_swap() -> None:
    entry = {"type": "MultiheadAttention", "keep": {"heads": [0, 1]}}
    plan: dict[str, Any] = {"format": "prunekit.structured.plan/1", "modules": {"attn": entry}}
    model = Wrapped()
    with pytest.raises(ConfigError, match="cannot drop \\['heads'\\] itself; the plan must swap"):
        apply_plan(model, plan)
    assert type(model.attn) is nn.MultiheadAttention and model.attn.num_heads == 4
    entry["swap"] = "FancyAttention"
    with pytest.raises(ConfigError, match="for a 'FancyAttention', but its layer adapter "
                                          "gives 'PrunedMultiheadAttention'"):
        apply_plan(model, plan)
    entry["swap"] = "PrunedMultiheadAttention"
    entry["keep"] = {"heads": [0, 9]}
    with pytest.raises(ConfigError, match="plan does not fit this model"):
        apply_plan(model, plan)
    assert type(model.attn) is nn.MultiheadAttention  # the swap was rolled back
    root = {"format": "prunekit.structured.plan/1",
            "modules": {"": {"type": "MultiheadAttention", "keep": {"heads": [0]},
                             "swap": "PrunedMultiheadAttention"}}}
    with pytest.raises(ConfigError, match="swaps the model itself"):
        apply_plan(nn.MultiheadAttention(8, 2), root)


class AliasedAttention(nn.Module):
    """One attention registered under two names of the same parent, called through the second."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.alias = self.attn

    def forward(self, x: Tensor) -> Tensor:
        return self.alias(x, x, x, need_weights=False)[0]


def test_swap_replaces_the_attention_under_every_name() -> None:
    torch.manual_seed(0)
    model, x = AliasedAttention().eval(), torch.randn(2, 6, 32)
    result = prune(model, x, ratio=0.5)
    assert isinstance(result.model.alias, PrunedMultiheadAttention)
    assert result.model.alias is result.model.attn and result.model.alias.num_heads == 2
    with torch.no_grad():
        assert result.model(x).shape == (2, 6, 32)
