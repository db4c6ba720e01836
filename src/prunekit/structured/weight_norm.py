"""Weight norm under structured surgery: cut ``g`` and ``v`` so that the weight stays exact.

``torch.nn.utils.parametrizations.weight_norm(module, name, dim)`` computes
``w = g · v / ‖v‖``, the norm taken over every axis of ``v`` but ``dim`` (over all of it
for ``dim=None``, which torch stores as -1), ``g`` holding one value per slice along
``dim``. Layer adapters cut the weight they read (``module.weight``, the effective one);
:class:`~prunekit.structured.adapters.ParamSlicer` cuts ``v`` (``original1``) instead, and
once every cut is known sets ``g' = (g / ‖v‖)[kept along dim] · ‖v'‖`` — plain
``g[kept]`` when only ``dim`` is cut — so the kept weights are unchanged and the layer
stays weight-normed with the same ``dim``. Any other parametrization (spectral norm,
orthogonal, sparsity masks, weight norm chained with another) is refused, and so is the
deprecated hook-based ``torch.nn.utils.weight_norm``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import _WeightNorm
from torch.nn.utils.spectral_norm import SpectralNorm as _LegacySpectralNorm
from torch.nn.utils.weight_norm import WeightNorm as _LegacyWeightNorm

from prunekit.errors import ConfigError

__all__ = ["cut_g", "is_weight_normed", "legacy_error", "legacy_weight_norms",
           "normed_axis"]


def is_weight_normed(module: nn.Module) -> bool:
    """Whether every parametrized tensor of the (parametrized) ``module`` carries weight
    norm and nothing else: the one parametrization structured pruning cuts."""
    chains = module._modules.get("parametrizations")
    if not isinstance(chains, nn.ModuleDict) or not len(chains):
        return False
    return all(len(chain) == 1 and type(chain[0]) is _WeightNorm  # type: ignore[arg-type,index]
               for chain in chains.values())


def normed_axis(chain: nn.Module) -> int | None:
    """The axis of ``v`` that weight norm keeps (``g`` has one value per index along it),
    non-negative; None where the norm is over the whole tensor."""
    dim = cast(_WeightNorm, cast(nn.ModuleList, chain)[0]).dim
    if dim is None or dim == -1:  # torch's encoding of dim=None: norm over the whole tensor
        return None
    return dim % cast(Tensor, chain.original1).dim()


def cut_g(g: Tensor, v: Tensor, v_cut: Tensor, axis: int | None, keep: Tensor | None,
          others_cut: bool) -> Tensor:
    """``g`` for ``v_cut`` (``v`` cut along ``axis`` to ``keep``, if given, and along other
    axes if ``others_cut``) that leaves every kept weight ``g · v / ‖v‖`` as it was."""
    dim = -1 if axis is None else axis
    with torch.no_grad():
        if keep is not None:
            keep = keep.to(g.device)
        if not others_cut:  # the slices' norms are unchanged
            return g.index_select(dim, keep) if keep is not None else g.detach().clone()
        scale = g / torch.norm_except_dim(v, 2, dim)
        if keep is not None:
            scale = scale.index_select(dim, keep)
        return scale * torch.norm_except_dim(v_cut, 2, dim)


def legacy_weight_norms(modules: Iterable[tuple[str, nn.Module]]
                        ) -> list[tuple[str, str, int, bool]]:
    """``(module path, tensor name, dim, spectral)`` of every hook-based weight norm
    (``spectral`` False) or spectral norm (True) in ``modules``."""
    found = []
    for path, module in modules:
        if module._forward_pre_hooks:
            found += [(path, hook.name, hook.dim, isinstance(hook, _LegacySpectralNorm))
                      for hook in module._forward_pre_hooks.values()
                      if isinstance(hook, (_LegacyWeightNorm, _LegacySpectralNorm))]
    return found


def legacy_error(found: list[tuple[str, str, int, bool]]) -> ConfigError:
    """The refusal for hook-based weight norm, with the exact switch to the parametrization;
    for hook-based spectral norm, with the call that bakes it in."""
    path, name, dim, spectral = found[0]
    where = f"model.get_submodule({path!r})" if path else "model"
    if spectral:
        return ConfigError(
            f"{path or 'the model'}.{name} uses the hook-based torch.nn.utils.spectral_norm, "
            f"whose weight a forward pre-hook recomputes from {name}_orig by power iteration "
            f"(the norm itself changes with every channel removed), so structured pruning "
            f"cannot cut it. Bake it in first (outputs unchanged): "
            f"torch.nn.utils.remove_spectral_norm({where}, {name!r}) for each, then prune "
            f"and apply spectral_norm again if you train with it"
        )
    found = [entry for entry in found if not entry[3]]
    names = ", ".join(f"{p or 'the model'}.{n}" for p, n, _, _ in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    verb = "uses" if len(found) == 1 else "use"
    return ConfigError(
        f"{names}{more} {verb} the deprecated hook-based torch.nn.utils.weight_norm, whose weight "
        f"a forward pre-hook recomputes from {name}_g and {name}_v, so structured pruning "
        f"cannot cut it. Switch each to the parametrization, which prunekit cuts exactly "
        f"(outputs unchanged): m = {where}; torch.nn.utils.remove_weight_norm(m, {name!r}); "
        f"torch.nn.utils.parametrizations.weight_norm(m, {name!r}, "
        f"dim={None if dim == -1 else dim})"
    )
