"""Masks as a ``torch.nn.utils.parametrize`` parametrization.

``module.weight`` becomes ``original * mask``: the optimizer updates ``original``,
the gradient reaching it is masked, and the effective weight at a pruned position is
exactly zero after any number of steps. The original Parameter object is kept (as
``parametrizations.<name>.original``), so optimizers built before masking still work.
``strip`` bakes ``original * mask`` back into a plain Parameter.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit._caches import own_parametrized_class


class WeightMask(nn.Module):
    """Parametrization multiplying a tensor by a fixed 0/1 mask buffer."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().to(torch.bool))

    mask: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.to(x.dtype)


def _parametrizations(module: nn.Module) -> nn.ModuleDict:
    """The ``parametrizations`` ModuleDict torch adds to a parametrized module."""
    found = module.parametrizations
    if not isinstance(found, nn.ModuleDict):
        raise TypeError(f"{type(module).__name__} has no parametrizations")
    return found


def _find_mask(module: nn.Module, name: str) -> WeightMask | None:
    if not parametrize.is_parametrized(module, name):
        return None
    chain = _parametrizations(module)[name]
    return next((p for p in chain.children() if isinstance(p, WeightMask)), None)


def apply_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Mask ``module.<name>`` with ``mask`` (True = keep); replaces an existing prunekit mask.

    Entries already zero in a previous mask stay zero only if ``mask`` says so; callers that
    prune further should pass ``old_mask & new_mask``.
    """
    current: torch.Tensor = getattr(module, name)
    if tuple(mask.shape) != tuple(current.shape):
        raise ValueError(
            f"mask for {type(module).__name__}.{name} has shape {tuple(mask.shape)}, "
            f"expected {tuple(current.shape)}"
        )
    existing = _find_mask(module, name)
    if existing is not None:
        existing.mask.copy_(mask.to(existing.mask.device, torch.bool))
        return
    own_parametrized_class(module)
    parametrize.register_parametrization(module, name, WeightMask(mask.to(current.device)))


def get_mask(module: nn.Module, name: str) -> torch.Tensor | None:
    """The boolean keep-mask on ``module.<name>``, or None if it is not masked."""
    found = _find_mask(module, name)
    return None if found is None else found.mask


def masked_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Fully-qualified tensor name (e.g. ``"features.0.weight"``) → boolean keep-mask."""
    out: dict[str, torch.Tensor] = {}
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in list(_parametrizations(module).keys()):
            mask = get_mask(module, tensor_name)
            if mask is not None:
                out[f"{mod_name}.{tensor_name}" if mod_name else tensor_name] = mask
    return out


def remove_mask(module: nn.Module, name: str, *, bake: bool = True) -> None:
    """Drop the mask on ``module.<name>``; with ``bake`` the pruned entries stay zero."""
    if _find_mask(module, name) is None:
        return
    own_parametrized_class(module)
    parametrize.remove_parametrizations(module, name, leave_parametrized=bake)


def strip(model: nn.Module) -> nn.Module:
    """Bake every prunekit mask into its weight and remove the parametrizations (in place).

    Outputs are unchanged; the model is plain PyTorch again (zeros stay as zeros).
    Returns ``model`` for chaining.
    """
    for name in list(masked_tensors(model)):
        mod_name, _, tensor_name = name.rpartition(".")
        remove_mask(model.get_submodule(mod_name), tensor_name, bake=True)
    return model
