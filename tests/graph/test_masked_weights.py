"""A weight multiplied by a mask of its shape in forward (PixelCNN's masked convolution,
MADE's masked linear, a pruning mask kept by hand): the layer takes ``W * mask`` as its
weight, so ``W`` is cut like a layer weight and the mask alike. Before, the conv was refused
("its weight is computed") and the linear kept its output width whole."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunekit as pk


class MaskedConv2d(nn.Conv2d):
    """PixelCNN's type-B mask: a pixel sees the rows above and the pixels to its left."""

    def __init__(self, cin: int, cout: int, k: int = 3) -> None:
        super().__init__(cin, cout, k, padding=k // 2)
        mask = torch.ones_like(self.weight)
        mask[:, :, k // 2, k // 2 + 1:] = 0
        mask[:, :, k // 2 + 1:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


class MaskedLinear(nn.Linear):
    """MADE: the mask written first."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout)
        self.register_buffer("mask", (torch.rand(cout, cin) > 0.3).float())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.mask * self.weight, self.bias)


class InPlaceMaskedConv2d(MaskedConv2d):
    """jzbontar's pixelcnn-pytorch: the mask written into the weight before the layer's own
    forward (before: "used both as a layer weight and elementwise", nothing pruned)."""

    def forward(self, x: Tensor) -> Tensor:
        self.weight.data *= self.mask
        return nn.Conv2d.forward(self, x)


def _inplace_conv() -> tuple[nn.Module, Tensor]:
    model, x = _conv()
    model[2] = InPlaceMaskedConv2d(16, 16)
    return model.eval(), x


def _conv() -> tuple[nn.Module, Tensor]:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), MaskedConv2d(16, 16),
                         nn.ReLU(), nn.Conv2d(16, 8, 1)).eval(), torch.randn(2, 1, 8, 8)


def _linear() -> tuple[nn.Module, Tensor]:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), MaskedLinear(32, 32), nn.ReLU(),
                         nn.Linear(32, 16)).eval(), torch.randn(4, 16)


def _zeroed(model: nn.Module, plan: dict) -> nn.Module:
    """``model`` with every output channel the plan removes zeroed (weight rows, bias)."""
    ref = copy.deepcopy(model)
    cuts = {path: entry["keep"].get("out") for path, entry in plan["modules"].items()}
    cuts.update({path.removesuffix(".weight"): entry["keep"].get("0")
                 for path, entry in plan["params"].items() if path.endswith(".weight")})
    with torch.no_grad():
        for path, keep in cuts.items():
            if keep is not None:
                module = ref.get_submodule(path)
                gone = sorted(set(range(module.weight.shape[0])) - set(keep))
                module.weight[gone] = 0
                module.bias[gone] = 0
    return ref


@pytest.mark.parametrize("make", [_conv, _linear])
def test_the_mask_is_cut_as_its_weight(make, tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, x = make()
    result = pk.prune(model, x, ratio=0.5)
    pruned, params = result.model, result.plan["params"]
    half = model[2].weight.shape[0] // 2
    assert pruned[2].weight.shape[:2] == (half, half)
    assert pruned[2].mask.shape == pruned[2].weight.shape
    assert params["2.mask"]["keep"] == params["2.weight"]["keep"]
    rows, cols = params["2.weight"]["keep"]["0"], params["2.weight"]["keep"]["1"]
    torch.testing.assert_close(pruned[2].mask, model[2].mask[rows][:, cols])
    torch.testing.assert_close(pruned(x), _zeroed(model, result.plan)(x))
    pk.save(result, tmp_path / "masked")
    reloaded = pk.load(tmp_path / "masked", make()[0])
    torch.testing.assert_close(reloaded(x), pruned(x))


def test_a_mask_written_into_the_weight_in_place_is_cut_as_the_weight(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, x = _inplace_conv()
    before = model[2].weight.detach().clone()
    result = pk.prune(model, x, ratio=0.5)
    assert torch.equal(model[2].weight, before)  # the user's weight is left as it was
    pruned, params = result.model, result.plan["params"]
    assert pruned[2].weight.shape[:2] == (8, 8) and pruned[2].mask.shape == (8, 8, 3, 3)
    assert params["2.mask"]["keep"] == params["2.weight"]["keep"]
    rows, cols = params["2.weight"]["keep"]["0"], params["2.weight"]["keep"]["1"]
    torch.testing.assert_close(pruned[2].mask, model[2].mask[rows][:, cols])
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference[2].weight.mul_(reference[2].mask)  # what its forward does, first
        torch.testing.assert_close(pruned(x), _zeroed(reference, result.plan)(x))
    pk.save(result, tmp_path / "masked")
    torch.testing.assert_close(pk.load(tmp_path / "masked", _inplace_conv()[0])(x), pruned(x))


class ScaledRows(nn.Module):
    """A weight scaled per output row by a vector broadcast along its inputs (a hand-written
    weight norm's ``v * g.unsqueeze(1)``): before, the product was read elementwise and
    nothing pruned; now ``g`` is cut with ``v``'s rows."""

    def __init__(self) -> None:
        super().__init__()
        self.v1 = nn.Parameter(torch.randn(16, 8))
        self.g1 = nn.Parameter(torch.rand(16) + 0.5)
        self.v2 = nn.Parameter(torch.randn(4, 16))
        self.g2 = nn.Parameter(torch.rand(4) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(F.linear(x, self.v1 * self.g1.unsqueeze(1)))
        return F.linear(h, self.v2 * self.g2.unsqueeze(1))


def test_a_mask_broadcast_along_size_one_dims_is_cut_with_the_weight() -> None:
    torch.manual_seed(0)
    model = ScaledRows().eval()
    x = torch.randn(5, 8)
    result = pk.prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.v1.shape == (8, 8) and pruned.g1.shape == (8,) and pruned.v2.shape == (4, 8)
    assert pruned.g2.shape == (4,)
    gone = sorted(set(range(16)) - set(result.plan["params"]["v1"]["keep"]["0"]))
    reference = ScaledRows()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.v2[:, gone] = 0
        assert torch.allclose(pruned(x), reference(x), atol=1e-5)


class SplineLinear(nn.Module):
    """efficient-kan's KANLinear: a base linear plus a spline branch, whose 3-D weight is
    scaled per (output, input) pair by a matrix broadcast along the spline bases and
    reshaped before its ``F.linear``."""

    def __init__(self, cin: int, cout: int, bases: int = 3) -> None:
        super().__init__()
        self.cout = cout
        self.base_weight = nn.Parameter(torch.randn(cout, cin))
        self.spline_weight = nn.Parameter(torch.randn(cout, cin, bases))
        self.spline_scaler = nn.Parameter(torch.rand(cout, cin) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        bases = torch.stack([x, x.square(), torch.sin(x)], dim=-1)  # [B, cin, bases]
        scaled = self.spline_weight * self.spline_scaler.unsqueeze(-1)
        spline = F.linear(bases.view(x.shape[0], -1), scaled.view(self.cout, -1))
        return F.linear(F.silu(x), self.base_weight) + spline


def test_a_scaled_weight_reshaped_before_its_layer_cuts_the_scale_alike(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Before, the reshape read the deferred product elementwise, the scale was "broadcast
    against channels on another axis" and the forward check failed with strict=True."""
    torch.manual_seed(0)
    model = nn.Sequential(SplineLinear(4, 16), nn.Tanh(), SplineLinear(16, 3)).eval()
    x = torch.randn(5, 4)
    result = pk.prune(model, x, ratio=0.5)
    pruned, params = result.model, result.plan["params"]
    assert pruned[0].spline_weight.shape == (8, 4, 3) and pruned[0].spline_scaler.shape == (8, 4)
    assert pruned[2].spline_weight.shape == (3, 8, 3) and pruned[2].spline_scaler.shape == (3, 8)
    keep = params["0.spline_weight"]["keep"]["0"]
    assert params["0.spline_scaler"]["keep"]["0"] == keep == params["2.spline_scaler"]["keep"]["1"]
    gone = sorted(set(range(16)) - set(keep))
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference[2].spline_weight[:, gone] = 0
        reference[2].base_weight[:, gone] = 0
        torch.testing.assert_close(pruned(x), reference(x))
    pk.save(result, tmp_path / "kan")
    fresh = nn.Sequential(SplineLinear(4, 16), nn.Tanh(), SplineLinear(16, 3))
    with torch.no_grad():
        torch.testing.assert_close(pk.load(tmp_path / "kan", fresh)(x), pruned(x))
