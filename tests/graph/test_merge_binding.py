"""Heads merged back into one dim with the width written from an attribute: an attribute
named for it (``self.all_head_size``, MobileViT's and older BERT's attention) is rewritten
with the heads kept; a model width of equal value (``self.hidden_size`` where the code
writes ``self.num_heads * self.head_dim``) is not what sized the merge and stays."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import prunekit as pk


class _Attention(nn.Module):
    def __init__(self, hidden: int = 32, heads: int = 4, stored: bool = True) -> None:
        super().__init__()
        self.stored = stored
        self.hidden_size = hidden
        self.num_attention_heads = heads
        self.attention_head_size = hidden // heads
        self.all_head_size = heads * self.attention_head_size
        self.query = nn.Linear(hidden, self.all_head_size)
        self.key = nn.Linear(hidden, self.all_head_size)
        self.value = nn.Linear(hidden, self.all_head_size)
        self.out = nn.Linear(self.all_head_size, hidden)

    def forward(self, x: Tensor) -> Tensor:
        shape = (*x.shape[:-1], -1, self.attention_head_size)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (self.query, self.key, self.value))
        y = torch.softmax(q @ k.transpose(-1, -2), -1) @ v
        width = (self.all_head_size if self.stored
                 else self.num_attention_heads * self.attention_head_size)
        return x + self.out(y.transpose(1, 2).reshape(*x.shape[:-1], width))


def test_stored_merged_width_is_rewritten_with_the_heads() -> None:
    torch.manual_seed(0)
    model, x = _Attention().eval(), torch.randn(2, 5, 32)
    result = pk.prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.num_attention_heads == 2 and pruned.all_head_size == 16
    assert pruned.query.out_features == 16 and pruned.hidden_size == 32
    assert result.plan["attrs"][""]["all_head_size"] == 16
    with torch.no_grad():
        assert pruned(x).shape == (2, 5, 32)


def test_model_width_of_equal_value_is_not_rewritten() -> None:
    torch.manual_seed(0)
    model, x = _Attention(stored=False).eval(), torch.randn(2, 5, 32)
    del model.all_head_size  # only hidden_size holds 32 now
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.num_attention_heads == 2 and result.model.hidden_size == 32
    assert "hidden_size" not in result.plan["attrs"].get("", {})
