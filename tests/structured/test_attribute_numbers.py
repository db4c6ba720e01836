"""A number the model's code computes from an int attribute that ``prune`` rewrites (the
``1 / math.sqrt(self.d_k)`` of an attention whose head count is a constant, SASRec's
``embedding_dim ** 0.5``) changes with it, so the pruned model's outputs change beyond the
removed channels. Before, that went without a word; now ``prune`` warns, naming the line."""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch
from torch import Tensor, nn

from prunekit.structured import prune

HEADS = 4  # a constant: the per-head width d_k, not the head count, is what prune cuts

class Attention(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.d_k = d // HEADS
        self.linear_q, self.linear_k, self.linear_v = (nn.Linear(d, d) for _ in range(3))
        self.linear_out = nn.Linear(d, d)
        self.scale = 1 / math.sqrt(self.d_k)  # (read by InitScaled only)

    def forward(self, x: Tensor) -> Tensor:
        return self.attend(x, 1 / math.sqrt(self.d_k))

    def attend(self, x: Tensor, scale: float) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (lin(x).view(b, t, HEADS, self.d_k).transpose(1, 2)
                   for lin in (self.linear_q, self.linear_k, self.linear_v))
        att = (q @ k.transpose(-2, -1) * scale).softmax(-1)
        return self.linear_out((att @ v).transpose(1, 2).reshape(b, t, -1))


class InitScaled(Attention):
    def forward(self, x: Tensor) -> Tensor:  # the scale computed once, at construction
        return self.attend(x, self.scale)


def _line(needle: str) -> str:
    lines, start = inspect.getsourcelines(Attention)
    return str(start + next(i for i, line in enumerate(lines) if needle in line))


def test_a_scale_from_a_rewritten_attribute_is_named() -> None:
    model, x = Attention().eval(), torch.randn(2, 6, 32)
    with pytest.warns(UserWarning, match=f"test_attribute_numbers.py:{_line('self.attend(x, 1')}"):
        result = prune(model, x, ratio=0.5)
    assert result.model.d_k == 4


def test_a_scale_computed_at_construction_keeps_its_value_and_no_warning() -> None:
    model, x = InitScaled().eval(), torch.randn(2, 6, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = prune(model, x, ratio=0.5)
    assert result.model.d_k == 4 and result.model.scale == 1 / math.sqrt(8)


class ScaledEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.item = nn.Embedding(50, 16)
        self.ff = nn.Linear(16, 16)

    def forward(self, seq: Tensor) -> Tensor:
        x = self.item(seq) * self.item.embedding_dim ** 0.5
        return (x + self.ff(x)) @ self.item.weight.t()


def test_a_childs_attribute_that_the_adapter_rewrites() -> None:
    with pytest.warns(UserWarning, match="computes a number from a width"):
        result = prune(ScaledEmbedding().eval(), torch.randint(0, 50, (3, 5)), ratio=0.5)
    assert result.model.item.embedding_dim == 8


def test_numeric_reads_are_found_outside_init_only() -> None:
    from prunekit.graph.numbers import numeric_attribute_reads

    assert {name for name, _ in numeric_attribute_reads(Attention)} == {"d_k"}
    # InitScaled's forward replaces Attention's, and __init__'s sqrt is a constant once built
    assert numeric_attribute_reads(InitScaled) == ()
    assert {name for name, _ in numeric_attribute_reads(ScaledEmbedding)} == {"embedding_dim"}
    assert numeric_attribute_reads(nn.Linear) == ()


def test_a_number_in_a_weight_initialiser_does_not_warn() -> None:
    """HF Wav2Vec2's ``_init_weights`` reads ``in_channels`` under a sqrt: every prune of its
    residual warned that the attention scale changed, though forward never calls it."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.out = nn.Conv1d(8, 16, 3, padding=1), nn.Conv1d(16, 4, 1)
            self.reset_parameters()

        def reset_parameters(self) -> None:
            nn.init.normal_(self.out.weight, std=math.sqrt(1 / self.out.in_channels))

        def _init_weights(self, module: nn.Module) -> None:
            if isinstance(module, nn.Conv1d):
                nn.init.uniform_(module.weight, -1 / math.sqrt(module.in_channels), 0.1)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(torch.relu(self.conv(x)))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = prune(Net().eval(), torch.randn(2, 8, 10), ratio=0.5)
    assert result.model.out.in_channels == 8
