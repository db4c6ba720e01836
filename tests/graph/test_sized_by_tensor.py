"""Tensors without channels, or of one unit, sized to an activation without writing its
width: by ``expand_as(x)`` (PyG's mean aggregation divides by ``count.view(-1,
1).expand_as(out)``), by ``repeat`` of a fill value or a column to sizes read from
``x.size()`` (PyG's ``to_dense_batch``), or by ``expand``/``repeat`` of a weight per token
to a channel count read from a shape (Autoformer). Their repeated dims follow ``x``'s
channels, as ``expand(x.shape)`` and ``x.new_zeros(...)`` do, instead of keeping them whole
or tying them into one unit; the pruned model equals the one with the removed channels
zeroed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

import prunekit as pk


class Sized(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
        self.how = how

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x).relu()
        count = x.new_ones(x.shape[0]) * 2  # one number per row, no channels
        if self.how == "expand_as":
            h = h / count.view(-1, 1).expand_as(h)
        elif self.how == "repeat_column":
            h = h / count.view(-1, 1).repeat(1, h.size(1))
        else:  # to_dense_batch: a 0-d fill repeated to [n + 1, *h.shape[1:]], rows written
            out = torch.as_tensor(0.0).repeat([h.size(0) + 1] + list(h.size())[1:])  # noqa: RUF005
            out[torch.arange(h.size(0))] = h
            h = out[:-1]
        return self.b(h)


@pytest.mark.parametrize("how", ["expand_as", "repeat_column", "repeat_fill"])
def test_a_tensor_sized_to_an_activation_follows_its_channels(how: str) -> None:
    torch.manual_seed(0)
    model = Sized(how).eval()
    result = pk.prune(model, torch.randn(10, 8), ratio=0.5)
    assert (result.model.a.out_features, result.model.b.in_features) == (8, 8)
    reference = _zero_removed_inputs(model, result.plan)
    for rows in (10, 3):
        x = torch.randn(rows, 8)
        with torch.no_grad():
            torch.testing.assert_close(result.model(x), reference(x))


class TokenWeights(nn.Module):
    """A weight per token (one unit: ``Linear(d, 1)``), repeated over the channels of ``v``
    by their count read from its shape (Autoformer's ``corr.repeat(1, head, channel, 1)``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.g, self.v, self.o = nn.Linear(16, 1), nn.Linear(16, 32), nn.Linear(32, 16)
        self.how = how

    def forward(self, x: Tensor) -> Tensor:
        w = torch.softmax(self.g(x).squeeze(-1), dim=-1)  # [B, L]
        v = self.v(x).transpose(1, 2)  # [B, C, L]
        width = v.shape[1]
        if self.how == "expand":
            w3 = w.unsqueeze(1).expand(-1, width, -1)
        else:
            w3 = w.unsqueeze(1).repeat(1, width, 1)
        return self.o((v * w3).transpose(1, 2))


@pytest.mark.parametrize("how", ["expand", "repeat"])
def test_one_unit_repeated_over_channels_does_not_tie_them(how: str) -> None:
    torch.manual_seed(0)
    model = TokenWeights(how).eval()
    result = pk.prune(model, torch.randn(2, 10, 16), ratio=0.5)
    assert result.model.v.out_features == result.model.o.in_features == 16
    reference = _zero_removed_inputs(model, result.plan)
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), reference(x))


class MaskedPooling(nn.Module):
    """Masked sum pooling of item embeddings, the padding mask repeated to the embedding
    width by an int attribute (DIN/SASRec-style code)."""

    def __init__(self, how: str, width: int = 16) -> None:
        super().__init__()
        self.how, self.d = how, width
        self.item = nn.Embedding(100, width, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, seq: Tensor) -> Tensor:
        mask = (seq != 0).unsqueeze(-1).float()
        mask = mask.expand(-1, -1, self.d) if self.how == "expand" else \
            mask.repeat(1, 1, self.d)
        return self.mlp((self.item(seq) * mask).sum(1))


@pytest.mark.parametrize("how", ["expand", "repeat"])
def test_a_mask_repeated_to_a_width_held_by_an_attribute(how: str, tmp_path: Path) -> None:
    # before, the mask met the embedding at a fixed width and kept it whole (0.87)
    torch.manual_seed(0)
    model = MaskedPooling(how).eval()
    seq = torch.randint(1, 100, (8, 6))
    seq[:, 4:] = 0
    result = pk.prune(model, seq, ratio=0.5)
    pruned = result.model
    assert pruned.d == pruned.item.embedding_dim == 8
    other = torch.randint(0, 100, (3, 9))
    torch.testing.assert_close(pruned(other), _zero_removed_inputs(model, result.plan)(other))
    pk.save(result, tmp_path / "pooled")
    torch.testing.assert_close(pk.load(tmp_path / "pooled", MaskedPooling(how))(other),
                               pruned(other))


class LengthRegulator(nn.Module):
    """FastSpeech's length regulator: each token repeated by its duration into a buffer
    whose length is a 0-dim tensor (``durations.sum(1).max()``), predicted or given."""

    def __init__(self, predicted: bool) -> None:
        super().__init__()
        self.predicted = predicted
        self.enc, self.dec = nn.Linear(8, 32), nn.Linear(32, 4)
        self.duration = nn.Linear(32, 1)

    def forward(self, x: Tensor, given: Tensor) -> Tensor:
        h = self.enc(x)
        durations = self.duration(h).squeeze(-1).abs().round().long() + 1 \
            if self.predicted else given
        out = torch.zeros((h.size(0), durations.sum(1).max(), h.size(2)))
        for i in range(h.size(0)):
            repeated = torch.repeat_interleave(h[i], durations[i], dim=0)
            out[i, : repeated.size(0)] = repeated
        return self.dec(out)


@pytest.mark.parametrize("predicted", [False, True])
def test_a_buffer_whose_length_is_a_tensor(predicted: bool) -> None:
    # before: refused by name (predicted) or the channels written into it kept whole
    torch.manual_seed(0)
    model = LengthRegulator(predicted).eval()
    x, given = torch.randn(2, 5, 8), torch.tensor([[1, 2, 1, 3, 1], [2, 2, 2, 1, 1]])
    result = pk.prune(model, (x, given), ratio=0.5)
    assert result.model.enc.out_features == result.model.dec.in_features == 16
    if not predicted:  # (predicted durations move with the removed channels)
        torch.testing.assert_close(result.model(x, given),
                                   _zero_removed_inputs(model, result.plan)(x, given))
