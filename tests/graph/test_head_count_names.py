"""Head counts that did not read as such, so each head lost part of its width instead of
whole heads going:

- ESPnet's and WeNet's attention (also the Annotated Transformer's) counts heads in
  ``self.h``: ``view(B, -1, self.h, self.d_k)``. The ``1 / sqrt(d_k)`` scale changed (with
  a warning) and the conformer's per-head biases ``pos_bias_u``/``pos_bias_v`` of shape
  ``(h, d_k)`` lost columns. Written as a leading factor of the split, ``self.h`` now
  counts heads.
- fairseq's attention merges the heads with the batch: ``view(T, bsz * self.num_heads,
  self.head_dim)``. A factor that reads one head count and repeats batch by batch now
  loses whole heads.

Either way ``d_k``/``head_dim`` keeps its value."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from tests.graph.test_unfold import _zero_removed_outputs
from torch import Tensor, nn

import prunekit as pk


class _RelPositionAttention(nn.Module):
    """ESPnet/WeNet's RelPositionMultiHeadedAttention, as written there."""

    def __init__(self, n_head: int = 4, n_feat: int = 32) -> None:
        super().__init__()
        self.d_k, self.h = n_feat // n_head, n_head
        self.linear_q, self.linear_k, self.linear_v, self.linear_out = (
            nn.Linear(n_feat, n_feat) for _ in range(4))
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.randn(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.randn(self.h, self.d_k))

    def forward(self, x: Tensor, mask: Tensor, pos_emb: Tensor) -> Tensor:
        n_batch = x.size(0)
        q = self.linear_q(x).view(n_batch, -1, self.h, self.d_k)
        k = self.linear_k(x).view(n_batch, -1, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(n_batch, -1, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k).transpose(1, 2)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        scores = (q_u @ k.transpose(-2, -1) + q_v @ p.transpose(-2, -1)) / math.sqrt(self.d_k)
        masked = mask.unsqueeze(1).eq(0)
        attn = torch.softmax(scores.masked_fill(masked, -float("inf")), dim=-1)
        out = (attn.masked_fill(masked, 0.0) @ v).transpose(1, 2).contiguous()
        return self.linear_out(out.view(n_batch, -1, self.h * self.d_k))


def _inputs() -> tuple[Tensor, Tensor, Tensor]:
    mask = torch.ones(2, 1, 7, dtype=torch.bool)
    mask[1, :, 5:] = False
    return torch.randn(2, 7, 32), mask, torch.randn(1, 7, 32)


def test_espnet_attention_loses_whole_heads_and_keeps_its_scale(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, inputs = _RelPositionAttention().eval(), _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scale no longer changes: nothing to warn of
        result = pk.prune(model, inputs, ratio=0.5, importance="random", seed=2)
    pruned = result.model
    assert (pruned.h, pruned.d_k) == (2, 8)
    assert pruned.pos_bias_u.shape == pruned.pos_bias_v.shape == (2, 8)
    assert pruned.linear_pos.out_features == pruned.linear_out.in_features == 16
    keep = result.plan["modules"]["linear_q"]["keep"]["out"]
    heads = sorted({c // 8 for c in keep})
    assert keep == [8 * head + j for head in heads for j in range(8)]
    for name in ("linear_k", "linear_v", "linear_pos"):
        assert result.plan["modules"][name]["keep"]["out"] == keep
    kept_bias = model.pos_bias_u.detach()[heads]
    torch.testing.assert_close(pruned.pos_bias_u.detach(), kept_bias)
    zeroed = _zero_removed_outputs(model, {"modules": {
        "linear_v": result.plan["modules"]["linear_v"]}})  # a removed head adds nothing
    with torch.no_grad():
        torch.testing.assert_close(pruned(*inputs), zeroed(*inputs), rtol=1e-4, atol=1e-5)
    pk.save(result, tmp_path / "p")
    loaded = pk.load(tmp_path / "p", _RelPositionAttention().eval())
    assert (loaded.h, loaded.d_k) == (2, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), pruned(*inputs), rtol=0, atol=0)


class _Height(nn.Module):
    """``self.h`` as a height, in a view that does not split channels: untouched."""

    def __init__(self) -> None:
        super().__init__()
        self.h, self.w = 4, 6
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.view(x.size(0), 3, self.h, self.w)).relu()
        return self.head(y.mean((2, 3)))


def test_a_height_named_h_is_not_taken_for_heads() -> None:
    model, x = _Height().eval(), torch.randn(2, 72)
    result = pk.prune(model, x, ratio=0.5)
    assert (result.model.h, result.model.w) == (4, 6)
    assert result.model.conv.out_channels == 4
    with torch.no_grad():
        assert result.model(x).shape == (2, 2)


class _FairseqAttention(nn.Module):
    """fairseq's MultiheadAttention, time-first, as written there."""

    def __init__(self, embed_dim: int = 32, num_heads: int = 4) -> None:
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(embed_dim, embed_dim) for _ in range(4))

    def forward(self, query: Tensor) -> Tensor:
        tgt_len, bsz, _ = query.size()
        q = self.q_proj(query) * self.scaling
        q = q.contiguous().view(tgt_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        k = self.k_proj(query).contiguous().view(-1, bsz * self.num_heads, self.head_dim)
        v = self.v_proj(query).contiguous().view(-1, bsz * self.num_heads, self.head_dim)
        weights = torch.bmm(q, k.permute(1, 2, 0)).softmax(-1)
        attn = torch.bmm(weights, v.transpose(0, 1)).transpose(0, 1).contiguous()
        return self.out_proj(attn.view(tgt_len, bsz, self.embed_dim))


def test_heads_merged_with_the_batch_go_whole(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = _FairseqAttention().eval(), torch.randn(5, 3, 32)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=1)
    pruned = result.model
    assert (pruned.num_heads, pruned.head_dim, pruned.embed_dim) == (2, 8, 16)
    keep = result.plan["modules"]["v_proj"]["keep"]["out"]
    heads = sorted({c // 8 for c in keep})
    assert keep == [8 * head + j for head in heads for j in range(8)]
    zeroed = _zero_removed_outputs(model, {"modules": {
        "v_proj": result.plan["modules"]["v_proj"]}})
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-4, atol=1e-5)
        other = torch.randn(4, 2, 32)  # another batch size and length
        torch.testing.assert_close(pruned(other), zeroed(other), rtol=1e-4, atol=1e-5)
    pk.save(result, tmp_path / "p")
    loaded = pk.load(tmp_path / "p", _FairseqAttention().eval())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x), rtol=0, atol=0)
