"""Complex parameters (a Fourier neural operator's spectral weights, ``torch.cfloat``) are
traced like real ones: the FNO width prunes through ``einsum("bixy,ioxy->boxy")``, scored
by ``|w|``. Before, complex tensors were never registered, so the width was kept whole with
the reason "not read by the forward pass" (found by the scientific-ML probe)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunekit as pk


class SpectralConv2d(nn.Module):
    """The FNO paper's layer, as its reference code writes it."""

    def __init__(self, in_channels: int, out_channels: int, modes: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.modes = in_channels, out_channels, modes
        scale = 1 / (in_channels * out_channels)
        self.weights1 = nn.Parameter(
            scale * torch.rand(in_channels, out_channels, modes, modes, dtype=torch.cfloat))
        self.weights2 = nn.Parameter(
            scale * torch.rand(in_channels, out_channels, modes, modes, dtype=torch.cfloat))

    def forward(self, x: Tensor) -> Tensor:
        b, m = x.shape[0], self.modes
        x_ft = torch.fft.rfft2(x)
        out_ft = torch.zeros(b, self.out_channels, x.size(-2), x.size(-1) // 2 + 1,
                             dtype=torch.cfloat)
        out_ft[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m, :m],
                                            self.weights1)
        out_ft[:, :, -m:, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, -m:, :m],
                                             self.weights2)
        return torch.fft.irfft2(out_ft, s=(x.size(-2), x.size(-1)))


class FNO2d(nn.Module):
    def __init__(self, width: int = 16, modes: int = 3) -> None:
        super().__init__()
        self.fc0 = nn.Linear(3, width)  # (a(x, y), x, y) lifted, channels last
        self.conv0, self.conv1 = SpectralConv2d(width, width, modes), \
            SpectralConv2d(width, width, modes)
        self.w0, self.w1 = nn.Conv2d(width, width, 1), nn.Conv2d(width, width, 1)
        self.fc1, self.fc2 = nn.Linear(width, 32), nn.Linear(32, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc0(x).permute(0, 3, 1, 2)
        x = F.gelu(self.conv0(x) + self.w0(x))
        x = self.conv1(x) + self.w1(x)
        return self.fc2(F.gelu(self.fc1(x.permute(0, 2, 3, 1))))


def _zeroed(model: FNO2d, plan: dict) -> FNO2d:
    """The unpruned model whose removed channels are zeroed where each is read."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for path, entry in plan["modules"].items():
            keep = entry["keep"].get("in")
            if keep is not None:
                layer = reference.get_submodule(path)
                layer.weight[:, sorted(set(range(layer.weight.shape[1])) - set(keep))] = 0
        for path, entry in plan["params"].items():
            if path.endswith(("weights1", "weights2")):
                weight = reference.get_parameter(path)
                weight[sorted(set(range(weight.shape[0])) - set(entry["keep"]["0"]))] = 0
    return reference


@pytest.mark.parametrize("importance", ["l2", "l1", "fpgm", "random"])
def test_an_fno_width_prunes_through_its_complex_weights(importance: str,
                                                          tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FNO2d().eval()
    x, other = torch.randn(2, 8, 8, 3), torch.randn(3, 8, 8, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no "casting complex values to real" on the way)
        result = pk.prune(model, x, ratio=0.5, importance=importance)
    pruned = result.model
    assert pruned.conv0.weights1.shape == (8, 8, 3, 3) and pruned.conv1.out_channels == 8
    assert pruned.conv0.weights1.dtype == torch.cfloat and result.params_kept < 0.5
    reference = _zeroed(model, result.plan)
    with torch.no_grad():
        for inputs in (x, other):
            assert torch.allclose(pruned(inputs), reference(inputs), atol=1e-5)
    loaded = pk.load(pk.save(result, tmp_path / "ckpt"), FNO2d()).eval()
    assert torch.equal(loaded(x), pruned(x))
