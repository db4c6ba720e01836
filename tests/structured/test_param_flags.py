"""Attributes set on a parameter (mamba_ssm's ``A_log._no_weight_decay``, S4's
``param._optim``) steer the user's optimizer groups. ``prune`` dropped them: on the copy
(``Parameter``'s deepcopy does not keep them) and on every cut parameter (a new
``Parameter``), so weight decay silently reached ``A_log`` and ``D``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import ConfigError


class _Ssm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 8)
        self.A_log = nn.Parameter(torch.randn(16, 4))
        self.D = nn.Parameter(torch.ones(16))
        self.gain = nn.Parameter(torch.ones(8))  # the output width: never cut
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.gain._optim = {"lr": 0.1}

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        return self.out(h * torch.exp(self.A_log).sum(-1) + h * self.D) * self.gain


def _flags(model: nn.Module) -> dict[str, dict]:
    return {name: dict(vars(p)) for name, p in model.named_parameters() if vars(p)}


@pytest.mark.parametrize("inplace", [False, True])
def test_parameter_flags_survive_prune_and_load(tmp_path: Path, inplace: bool) -> None:
    model = _Ssm()
    expected = _flags(model)
    assert set(expected) == {"A_log", "D", "gain"}
    result = pk.prune(model, torch.randn(2, 5, 8), ratio=0.5, inplace=inplace)
    assert result.model.D.shape == (8,) and result.model.A_log.shape == (8, 4)
    assert _flags(result.model) == expected
    assert _flags(model) == expected
    pk.save(result, tmp_path / "p")
    assert _flags(pk.load(tmp_path / "p", _Ssm())) == expected


def _built_in_inference_mode() -> nn.Module:
    torch.manual_seed(0)
    with torch.inference_mode():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 4, 3)).eval()


def test_a_model_built_under_inference_mode(tmp_path: Path) -> None:
    # result.params_kept raised "Setting requires_grad=True on inference tensor" (and with a
    # BatchNorm "Inplace update to inference tensor") and left every parameter of the
    # user's model with requires_grad=False; loading into such a model failed in torch
    model, x = _built_in_inference_mode(), torch.randn(2, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5)
    assert 0.2 < result.params_kept < 0.6 and 0.2 < result.macs_kept < 0.6
    assert all(p.requires_grad for p in model.parameters())
    assert result.model[0].out_channels == 4
    pk.save(result, tmp_path)
    with pytest.raises(ConfigError, match=r"built under torch\.inference_mode"):
        pk.load(tmp_path, _built_in_inference_mode())
    with torch.inference_mode():
        loaded = pk.load(tmp_path, _built_in_inference_mode())
        assert torch.equal(loaded(x), result.model(x))
