"""A reshape that merges heads back into one width written from an int attribute
(``reshape(B, N, self.attn_dim)`` with ``attn_dim = num_heads * head_dim``, as timm's
``Attention`` does): the attribute is rewritten with the heads, else it goes stale."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunekit.structured import prune


class MergedAttention(nn.Module):
    def __init__(self, dim: int = 12, num_heads: int = 4, head_dim: int = 5) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attn_dim = num_heads * head_dim
        self.q = nn.Linear(dim, self.attn_dim)
        self.k = nn.Linear(dim, self.attn_dim)
        self.v = nn.Linear(dim, self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.attn_dim))


def test_merged_width_attribute_shrinks_with_the_heads() -> None:
    torch.manual_seed(0)
    model, x = MergedAttention().eval(), torch.randn(2, 7, 12)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.num_heads == 2 and pruned.head_dim == 5
    assert pruned.attn_dim == 10 == pruned.proj.in_features == pruned.q.out_features
    assert result.plan["attrs"][""]["attn_dim"] == 10
    assert pruned(x).shape == (2, 7, 12)
    assert model.attn_dim == 20  # the user's model is left as it was


class OutDimAttention(MergedAttention):
    """tiny_vit / hiera: the merged width is held by ``out_dim``, a name the head rules do
    not know, next to ``dim`` of equal value that the forward never reads."""

    def __init__(self) -> None:
        super().__init__(dim=20, num_heads=4, head_dim=5)
        self.dim = self.out_dim = 20

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        merged = (attn @ v).transpose(1, 2).reshape(  # (the call's span is two lines)
            b, n, self.out_dim)
        return self.proj(merged)


def test_the_attribute_the_call_reads_is_rewritten_whatever_its_name() -> None:
    torch.manual_seed(0)
    model, x = OutDimAttention().eval(), torch.randn(2, 7, 20)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.num_heads == 2 and pruned.out_dim == 10 == pruned.proj.in_features
    assert pruned.dim == 20  # equal value, not read by the call: left alone
    assert result.plan["attrs"][""]["out_dim"] == 10 and "dim" not in result.plan["attrs"][""]
    assert pruned(x).shape == (2, 7, 20)


class PixelEmbed(nn.Module):
    """TNT's pixel embedding: patches unfolded from a conv's output, reshaped back to
    ``(patches, self.in_dim, k, k)`` and then to ``(patches, self.in_dim, k * k)``, a dim left
    whole by the second reshape but written from ``in_dim``."""

    def __init__(self, in_dim: int = 8, k: int = 2) -> None:
        super().__init__()
        self.in_dim, self.k, self.width = in_dim, k, in_dim
        self.proj = nn.Conv2d(3, in_dim, 3, padding=1)
        self.pos = nn.Parameter(torch.randn(1, in_dim, k, k))
        self.norm = nn.LayerNorm(in_dim)
        self.head = nn.Linear(in_dim, 5)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        x = nn.functional.unfold(self.proj(x), self.k, stride=self.k)
        x = x.transpose(1, 2).reshape(-1, self.in_dim, self.k, self.k) + self.pos
        x = x.reshape(-1, self.in_dim, self.k * self.k).transpose(1, 2)
        return self.head(self.norm(x)).reshape(b, -1, 5)


def test_a_dim_left_whole_written_from_an_attribute_binds_it() -> None:
    torch.manual_seed(0)
    model, x = PixelEmbed().eval(), torch.randn(2, 3, 6, 6)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.in_dim == 4 == pruned.proj.out_channels == pruned.norm.normalized_shape[0]
    assert pruned.width == 8  # unread by the calls
    assert pruned(x).shape == model(x).shape == (2, 36, 5)
    assert model.in_dim == 8
