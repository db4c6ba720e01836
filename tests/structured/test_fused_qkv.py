"""Whole heads through one fused q/k/v projection (GPT-2's ``c_attn``): split by a width
attribute, ``chunk(3)`` or a ``(3, heads, head_dim)`` view. The same heads leave q, k and v
(rows of ``c_attn``) and ``c_proj`` (its input columns); the split width and the head count
are rewritten, and a saved result reloads through its plan."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import PruneValidationError
from prunekit.structured import prune

Style = Literal["split", "chunk", "view", "bloom", "computed", "computed_view",
                "functional_view", "sliced_bias", "literal", "ambiguous", "twin"]
COMPUTED = ("computed", "computed_view", "functional_view", "sliced_bias")  # no head size
DIM, HEADS, VOCAB = 32, 4, 50
HEAD_DIM = DIM // HEADS


class FusedAttention(nn.Module):
    """Causal attention with one fused ``c_attn``, in the ways hand-written GPTs write it.

    ``computed`` is nanoGPT's: the head size is ``C // n_head`` with ``C`` read from the
    input and no attribute holds it, so the heads stay and every head shrinks with the
    input width. ``computed_view`` is Swin's: the same size in a ``(3, heads,
    C // heads)`` view of the fused output, ``functional_view`` the same through
    ``F.linear(x, self.c_attn.weight, ...)``, as Swin calls it, ``sliced_bias`` Swin V2's,
    which zeroes the k part of a copy of the bias first (so q/k/v are kept whole)."""

    def __init__(self, style: Style) -> None:
        super().__init__()
        self.style = style
        self.n_head = HEADS
        if style != "literal":  # (a literal equal to an attribute would pass for it)
            self.n_embd = DIM
        if style not in COMPUTED:  # nanoGPT keeps no head size
            self.head_dim = HEAD_DIM
        if style in ("ambiguous", "twin"):
            self.width = DIM  # a second attribute with the split width
        self.c_attn = nn.Linear(DIM, 3 * DIM)
        self.c_proj = nn.Linear(DIM, DIM)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.size()
        if self.style == "functional_view":
            fused = F.linear(x, self.c_attn.weight, self.c_attn.bias)
        elif self.style == "sliced_bias":
            bias = self.c_attn.bias.clone()
            bias[c: 2 * c].zero_()
            fused = F.linear(x, self.c_attn.weight, bias)
        else:
            fused = self.c_attn(x)
        if self.style == "view":
            qkv = fused.view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        elif self.style in ("computed_view", "functional_view", "sliced_bias"):
            qkv = fused.view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
        elif self.style == "bloom":  # rows laid out as (heads, 3, head_dim)
            qkv = fused.view(b, t, self.n_head, 3, self.head_dim).transpose(1, 2)
            q, k, v = qkv.unbind(3)
        else:
            if self.style == "chunk":
                parts = fused.chunk(3, dim=-1)
            elif self.style == "literal":
                parts = fused.split(DIM, dim=2)
            elif self.style == "ambiguous":  # read a statement before: n_embd or width?
                width = self.n_embd
                parts = fused.split(width, dim=2)
            else:
                parts = fused.split(self.n_embd, dim=2)
            size = c // self.n_head if self.style == "computed" else self.head_dim
            q, k, v = (p.view(b, t, self.n_head, size).transpose(1, 2) for p in parts)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, style: Style, norm: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(DIM) if norm else nn.Identity()
        self.attn = FusedAttention(style)
        self.ln_2 = nn.LayerNorm(DIM) if norm else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class FusedGPT(nn.Module):
    """``wte + wpe`` → blocks → LM head; ``norm=False`` drops the LayerNorms, so that pruning
    equals zeroing (no cross-channel statistics)."""

    def __init__(self, style: Style = "split", norm: bool = True, depth: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, DIM)
        self.wpe = nn.Embedding(16, DIM)
        self.h = nn.ModuleList(Block(style, norm) for _ in range(depth))
        self.lm_head = nn.Linear(DIM, VOCAB)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(x)


def _build(style: Style = "split", norm: bool = True) -> FusedGPT:
    torch.manual_seed(0)
    return FusedGPT(style, norm).eval()


def _ids() -> Tensor:
    return torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _heads_only(model: nn.Module, ratio: float) -> dict[str, float]:
    return {f"h.{i}.attn.c_attn": ratio for i in range(len(model.h))}  # type: ignore[arg-type]


PER_HEAD = 3 * HEAD_DIM * (DIM + 1) + HEAD_DIM * DIM  # q/k/v rows + biases, c_proj columns


@pytest.mark.parametrize("style", ["split", "chunk", "view", "bloom", "twin"])
@pytest.mark.parametrize(("ratio", "removed"), [(0.3, 1), (0.5, 2)])
def test_whole_heads_leave_the_fused_projection(style: Style, ratio: float,
                                                removed: int) -> None:
    model, ids = _build(style), _ids()
    result = prune(model, ids, ratios=_heads_only(model, ratio))
    left = HEADS - removed
    for block in result.model.h:
        attn = block.attn
        assert attn.n_head == left and attn.head_dim == HEAD_DIM  # (not rewritten)
        assert attn.c_attn.weight.shape == (3 * left * HEAD_DIM, DIM)
        assert attn.c_attn.bias.shape == (3 * left * HEAD_DIM,)
        assert attn.c_proj.weight.shape == (DIM, left * HEAD_DIM)
        if style in ("split", "twin"):
            assert attn.n_embd == left * HEAD_DIM  # the split width follows
        if style == "twin":  # equal to n_embd, but not what the split reads
            assert attn.width == DIM
    assert _params(model) - _params(result.model) == 2 * removed * PER_HEAD
    with torch.no_grad():
        assert result.model(ids).shape == model(ids).shape == (2, 8, VOCAB)
    attrs = result.plan["attrs"]["h.0.attn"]
    assert attrs["n_head"] == left and attrs.get("n_embd", left * HEAD_DIM) == left * HEAD_DIM


@pytest.mark.parametrize("style", ["split", "chunk", "view", "bloom"])
def test_the_same_heads_leave_q_k_v_and_c_proj(style: Style) -> None:
    model, ids = _build(style), _ids()
    result = prune(model, ids, ratios=_heads_only(model, 0.5), importance="random", seed=4)
    keep = result.plan["modules"]["h.0.attn.c_attn"]["keep"]["out"]
    cols = result.plan["modules"]["h.0.attn.c_proj"]["keep"]["in"]
    heads = sorted({c // HEAD_DIM for c in cols})
    assert cols == [h * HEAD_DIM + j for h in heads for j in range(HEAD_DIM)]
    assert len(heads) == 2
    if style == "bloom":  # rows laid out as (heads, 3, head_dim)
        assert keep == [3 * h * HEAD_DIM + j for h in heads for j in range(3 * HEAD_DIM)]
    else:  # q | k | v (or the view's (3, heads, head_dim)): the kept heads' rows in each
        assert keep == [p * DIM + c for p in range(3) for c in cols]


@pytest.mark.parametrize("style", ["split", "chunk", "view", "bloom"])
def test_pruning_heads_equals_zeroing_their_contribution(style: Style) -> None:
    model, ids = _build(style, norm=False), _ids()
    for ratios in (_heads_only(model, 0.5), None):  # heads alone, then every group at 0.5
        kwargs: dict[str, Any] = {"ratios": ratios} if ratios else {"ratio": 0.5}
        result = prune(model, ids, importance="random", seed=3, **kwargs)
        assert result.model.h[1].attn.n_head == 2
        zeroed = _zero_removed_inputs(model, result.plan)  # c_proj ignores the removed heads
        with torch.no_grad():
            torch.testing.assert_close(result.model(ids), zeroed(ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("style", ["split", "bloom"])
def test_ratio_zero_keeps_outputs_identical(style: Style) -> None:
    model, ids = _build(style), _ids()
    for kwargs in ({"ratio": 0.0}, {"ratios": _heads_only(model, 0.0)}):
        result = prune(model, ids, **kwargs)  # type: ignore[arg-type]
        assert result.plan["attrs"] == {} and _params(result.model) == _params(model)
        with torch.no_grad():
            assert torch.equal(result.model(ids), model(ids))


@pytest.mark.parametrize("style", ["split", "view"])
def test_save_then_load_replays_heads_and_attributes(style: Style, tmp_path: Path) -> None:
    model, ids = _build(style), _ids()
    result = prune(model, ids, ratio=0.5)
    pk.save(result, tmp_path / "gpt")
    loaded = pk.load(tmp_path / "gpt", FusedGPT(style).eval())
    assert loaded.h[0].attn.n_head == result.model.h[0].attn.n_head == 2
    assert loaded.h[0].attn.n_embd == result.model.h[0].attn.n_embd
    with torch.no_grad():
        assert torch.equal(loaded(ids), result.model(ids))


@pytest.mark.parametrize("style", ["computed", "computed_view", "functional_view"])
def test_a_per_head_size_computed_from_the_input_width_shrinks_every_head(
        style: Style) -> None:
    """``C // self.n_head`` with ``C`` read from the input: the heads stay, each loses as
    many channels, and the residual width shrinks by that many per head. The attention's
    default scale follows the head width, which the one warning says (and nothing else)."""
    model, ids = _build(style), _ids()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = prune(model, ids, ratio=0.5)
    assert [str(w.message).split(",")[0] for w in caught] == [
        "the pruned model computes a number from a width that this prune changed"]
    width = result.model.wte.embedding_dim
    assert width == DIM // 2
    for block in result.model.h:
        attn = block.attn
        assert attn.n_head == HEADS and attn.c_attn.weight.shape == (3 * width, width)
        assert attn.c_proj.weight.shape == (width, width)
    assert not any(name.startswith("h.") for name in result.coverage.fixed)
    with torch.no_grad():
        assert result.model(ids).shape == (2, 8, VOCAB)


@pytest.mark.parametrize(("style", "why"), [
    ("sliced_bias", r"selects a fixed part of a channel dimension"),
    ("literal", r"no int attribute of module 'h\.0\.attn' holds that width"),
    ("ambiguous", r"several attributes of module 'h\.0\.attn' hold \(n_embd, width\)"),
])
def test_widths_that_cannot_be_rewritten_keep_attention_whole(style: Style, why: str) -> None:
    model, ids = _build(style), _ids()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # kept whole on purpose, not an unsupported op
        result = prune(model, ids, ratio=0.5)
    attn = result.model.h[0].attn
    assert attn.n_head == HEADS and attn.c_attn.out_features == 3 * DIM
    assert result.model.h[0].mlp[0].out_features == DIM  # the MLP still prunes
    reasons = {e.name: e.reason for e in result.coverage.entries}
    assert re.search(why, reasons["h.0.attn.c_attn.weight"])
    with torch.no_grad():
        assert result.model(ids).shape == (2, 8, VOCAB)
    if style == "sliced_bias":  # C // n_head reads the input width: the residual stays too
        assert result.model.wte.embedding_dim == DIM
    else:
        assert result.model.wte.embedding_dim == DIM // 2


def test_a_split_width_read_elsewhere_fails_loudly_and_leaves_the_model() -> None:
    class ResidualWidth(FusedAttention):
        def forward(self, x: Tensor) -> Tensor:  # n_embd also slices the residual here
            return super().forward(x)[..., :self.n_embd]

    model, ids = _build(), _ids()
    for block in model.h:
        old = block.attn
        block.attn = ResidualWidth("split")
        block.attn.load_state_dict(old.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruneValidationError, match="model is unchanged"):
        prune(model, ids, ratios=_heads_only(model, 0.5))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.h[0].attn.n_embd == DIM and model.h[0].attn.n_head == HEADS


def test_hugging_face_gpt2_prunes_heads_through_c_attn(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=DIM, n_layer=2, n_head=HEADS,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    inputs = {"input_ids": _ids()}
    result = prune(model, inputs, ratio=0.5)
    for block in result.model.transformer.h:
        attn = block.attn  # split_size (not embed_dim, which holds the same value) follows
        assert (attn.num_heads, attn.split_size, attn.head_dim) == (2, 16, HEAD_DIM)
        assert attn.c_attn.nf == 48 and attn.c_proj.nx == 16
        # embed_dim, which forward never reads, repeats the stream's width (halved too)
        assert attn.embed_dim == attn.c_attn.nx == result.model.transformer.wte.embedding_dim
    assert result.plan["attrs"]["transformer.h.0.attn"] == {"split_size": 16, "num_heads": 2,
                                                           "embed_dim": 16}
    with torch.no_grad():
        logits = result.model(**inputs).logits
        assert logits.shape == model(**inputs).logits.shape == (2, 8, VOCAB)
    pk.save(result, tmp_path / "gpt2")
    loaded = pk.load(tmp_path / "gpt2", transformers.GPT2LMHeadModel(config).eval())
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, logits)


class _BandedBlock(nn.Module):
    """Splits its fused q/k/v by the width read from the input's shape; ``window`` (a local
    attention band) happens to equal that width."""

    def __init__(self, d: int = 32, n_head: int = 4, window: int = 32) -> None:
        super().__init__()
        self.n_head, self.window = n_head, window
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = [t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.qkv(x).split(C, 2)]
        i = torch.arange(T)
        band = (i[:, None] - i[None, :] < self.window) & (i[:, None] >= i[None, :])
        att = (q @ k.transpose(-2, -1) * 0.3).masked_fill(~band, float("-inf")).softmax(-1)
        return x + self.proj((att @ v).transpose(1, 2).reshape(B, T, C))


def test_an_attribute_that_only_equals_a_width_read_from_a_shape_is_not_rewritten() -> None:
    """Before, ``split(C, 2)`` with C from ``x.shape`` bound the first int attribute equal
    to C, here ``window``, and rewrote it to 16: the band changed, silently (0.021 off the
    zeroed model; found by the reinforcement-learning probe's Decision-Transformer block)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), _BandedBlock(), nn.Linear(32, 2)).eval()
    x = torch.randn(2, 40, 8)
    with pytest.warns(UserWarning, match="removed nothing"):
        result = prune(model, x, ratio=0.5)
    assert result.plan["attrs"] == {} and result.model[1].window == 32
    assert "no int attribute of module '1' holds that width" in \
        result.coverage.fixed["1.qkv.weight"]


class _WindowAttention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, -1))


class _TokenWindows(nn.Module):
    """Attention within windows of 4 tokens, ``x.view(B * L // 4, 4, C)``; ``spare`` is never
    called, so the model is traced a second time, in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.attn, self.norm, self.head = _WindowAttention(), nn.LayerNorm(32), nn.Linear(32, 5)
        self.spare = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        windows = x.view(B * L // 4, 4, C)
        return self.head((x + self.norm(self.attn(windows)).view(B, L, C)).mean(1))


def test_a_split_of_tokens_leaves_the_heads_free() -> None:
    # B·L = 2·16 equals the width 32: the split of the tokens was taken for a split of the
    # (residual, kept whole) channels by a size computed in the code, and the attention's
    # input width was kept whole with it; every head stayed
    torch.manual_seed(0)
    model, x = _TokenWindows().eval(), torch.randn(2, 16, 32)
    result = prune(model, x, ratio=0.5)
    assert result.model.attn.num_heads == 2 and result.model.attn.proj.in_features == 16
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), _zero_removed_inputs(model, result.plan)(x))
