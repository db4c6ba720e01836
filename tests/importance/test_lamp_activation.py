"""LAMP and activation-aware scores against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.importance import CalibrationData, get_criterion, prepare_scorers
from prunekit.importance.activation import activation_rms
from prunekit.importance.lamp import lamp_scores
from prunekit.sparse.sparsify import sparsify


def test_lamp_by_hand() -> None:
    w = torch.tensor([[1.0, -3.0], [2.0, 0.0]])
    # ascending squares 0, 1, 4, 9 → tails 14, 14, 13, 9
    expected = torch.tensor([[1 / 14, 1.0], [4 / 13, 0.0]])
    assert torch.allclose(lamp_scores(w), expected)
    assert float(lamp_scores(torch.zeros(3)).sum()) == 0.0


def test_lamp_keeps_every_layer_alive_in_a_global_ranking() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)  # magnitude alone would empty this layer
    result = sparsify(model, 0.45, criterion="lamp")
    assert 0 < result.tensor_sparsity["1.weight"] < 1
    l1 = sparsify(nn.Sequential(*[nn.Linear(8, 8) for _ in range(2)]), 0.5, criterion="l1")
    assert l1.global_sparsity == pytest.approx(0.5)


def _batches(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x, torch.zeros(x.shape[0], dtype=torch.long))]


def test_activation_linear_by_hand() -> None:
    layer = nn.Linear(2, 2)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    stats = activation_rms(layer, ["weight"],
                           CalibrationData(_batches(x)))
    rms = torch.tensor([math.sqrt(5.0), math.sqrt(10.0)])
    assert torch.allclose(stats["weight"], rms.expand(2, 2))
    scorer = prepare_scorers(get_criterion("activation"), layer, {"weight": layer.weight},
                             _batches(x), caller="test")
    got = scorer("weight").score(layer.weight, generator=torch.Generator())
    assert torch.allclose(got, layer.weight.detach().abs() * rms)


def test_activation_grouped_conv_maps_channels_to_groups() -> None:
    conv = nn.Conv2d(4, 4, 1, groups=2, bias=False)
    x = torch.zeros(1, 4, 2, 2)
    for c in range(4):
        x[0, c] = c + 1.0  # channel c has RMS c + 1
    model = nn.Sequential(conv, nn.Flatten())
    stats = activation_rms(model, ["0.weight"], CalibrationData(
        _batches(x), loss_fn=lambda m, b: m(b[0]).sum()))["0.weight"]
    # out 0, 1 read channels 0, 1; out 2, 3 read channels 2, 3
    assert stats[:, :, 0, 0].tolist() == [[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [3.0, 4.0]]


def test_activation_rejects_layers_without_input_features() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ConvTranspose1d(1, 1, 1))
    with pytest.raises(ConfigError, match=r"ConvTranspose1d.*register_input_features"):
        sparsify(model, 0.5, criterion="activation",
                 data=_batches(torch.randn(2, 1, 3)), loss_fn=lambda m, b: m(b[0]).sum())


def test_activation_prefers_weights_on_loud_inputs() -> None:
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.5]]))
    x = torch.tensor([[0.1, 10.0]] * 4)
    sparsify(layer, 0.5, criterion="activation", data=_batches(x),
             loss_fn=lambda m, b: m(b[0]).sum())
    assert layer.weight.tolist() == [[0.0, 0.5]]
