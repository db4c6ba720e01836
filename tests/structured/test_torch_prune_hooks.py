"""Structured pruning of layers that ``torch.nn.utils.prune`` masks.

Such a layer holds ``weight_orig`` (the parameter) and ``weight_mask`` (a buffer), and a
forward pre-hook sets ``weight = weight_orig * weight_mask`` before every call. The cut
slices all three alike, so the kept weights keep their mask (and their zeros through
training), and ``pk.load`` re-attaches the hooks on a freshly built model.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import prunekit as pk

X = torch.randn(2, 3, 12, 12)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 5)).eval()


def _masked() -> nn.Sequential:
    """Unstructured masks on the weights of three layers (twice on one: a container of
    two methods) and on one bias."""
    net = _net()
    torch_prune.l1_unstructured(net[0], "weight", 0.3)
    torch_prune.l1_unstructured(net[3], "weight", 0.4)
    torch_prune.random_unstructured(net[3], "weight", 0.2)
    torch_prune.ln_structured(net[7], "weight", 0.25, n=2, dim=1)
    torch_prune.l1_unstructured(net[3], "bias", 0.5)
    return net


def _zeros_masked(module: nn.Module, name: str = "weight") -> bool:
    """The tensor is zero wherever its mask is, and the mask hides something (layer 7's
    masked columns may all be cut: they score lowest)."""
    mask = getattr(module, f"{name}_mask")
    return bool((getattr(module, name)[mask == 0] == 0).all()) and (
        bool((mask == 0).any()) or module.weight.dim() == 2)


def test_identity_masks_change_nothing() -> None:
    plain, hooked = _net(), _net()
    for layer in (hooked[0], hooked[3], hooked[7]):
        torch_prune.identity(layer, "weight")
    a, b = pk.prune(plain, (X,), ratio=0.5), pk.prune(hooked, (X,), ratio=0.5)
    assert a.plan == b.plan
    assert torch.allclose(a.model(X), b.model(X))


def test_cut_slices_orig_and_mask_alike_and_matches_removed_masks() -> None:
    net, baked = _masked(), _masked()  # (a module masked by hooks cannot be deep-copied)
    for layer, name in ((baked[0], "weight"), (baked[3], "weight"), (baked[7], "weight"),
                        (baked[3], "bias")):
        torch_prune.remove(layer, name)
    result = pk.prune(net, (X,), ratio=0.5)
    reference = pk.prune(baked, (X,), ratio=0.5)
    # the masked weights score as what the layers compute with
    assert result.plan == reference.plan
    assert torch.allclose(result.model(X), reference.model(X), atol=1e-6)
    conv = result.model[3]
    assert conv.out_channels == 16 and conv.in_channels == 8
    for name in ("weight", "bias"):
        assert getattr(conv, f"{name}_orig").shape == getattr(conv, f"{name}_mask").shape \
            == getattr(conv, name).shape
    assert result.model[7].weight_orig.shape == (12, 16)
    assert all(_zeros_masked(m) for m in (result.model[0], conv, result.model[7]))
    assert _zeros_masked(conv, "bias")
    assert dict(net.named_parameters())["3.weight_orig"].shape == (32, 16, 3, 3)  # a copy


def test_masks_hold_through_an_optimizer_step() -> None:
    model = pk.prune(_masked(), (X,), ratio=0.5).model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(X).square().sum().backward()
    optimizer.step()
    model.eval()(X)  # the pre-hooks recompute the weights
    assert all(_zeros_masked(m) for m in (model[0], model[3], model[7]))


def test_ratio_zero_is_identical() -> None:
    net = _masked()
    assert torch.equal(pk.prune(net, (X,), ratio=0.0).model(X), net(X))


def test_save_load_reattaches_the_masks(tmp_path: Path) -> None:
    result = pk.prune(_masked(), (X,), ratio=0.5)
    pk.save(result, tmp_path / "ckpt")
    loaded = pk.load(tmp_path / "ckpt", _net())
    assert torch.equal(loaded(X), result.model(X))
    loaded.train()
    optimizer = torch.optim.SGD(loaded.parameters(), lr=0.5)
    loaded(X).square().sum().backward()
    optimizer.step()
    loaded.eval()(X)
    assert _zeros_masked(loaded[3]) and _zeros_masked(loaded[3], "bias")
