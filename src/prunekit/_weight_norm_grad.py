"""Gradients of the weight that weight norm computes, for gradient criteria.

``torch.nn.utils.parametrizations.weight_norm`` makes the weight ``w = g · v / ‖v‖`` from
two leaves; ``loss.backward()`` fills ``g.grad`` and ``v.grad``, and the weight the
structured engine scores (the effective one, recomputed at every read) has no ``.grad``.
Its gradient follows exactly from theirs, slice by slice along weight norm's ``dim``
(``v̂ = v / ‖v‖``)::

    ∂L/∂v = (g / ‖v‖) · (∂L/∂w − (∂L/∂w · v̂) v̂),   ∂L/∂g = ∂L/∂w · v̂
    ⇒ ∂L/∂w = (‖v‖ / g) · ∂L/∂v + ∂L/∂g · v̂

(:func:`weight_grad`; a slice with ``g = 0`` has no gradient along ``v`` left to recover,
and keeps the part along ``v̂``). A statistic over calibration batches (E|∂L/∂w|, E[(∂L/∂w)²])
is not linear in the leaves' statistics, so :func:`~prunekit.importance.calibrated`
converts every batch's gradients before it averages, and holds the weight's statistic for
the block (:func:`holding`) where the structured engine looks for it
(:func:`leaf_grad_weight`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import _WeightNorm

__all__ = ["holding", "leaf_grad_weight", "weight_grad", "weight_normed_tensors"]


def weight_normed_tensors(model: nn.Module) -> dict[str, nn.Module]:
    """``"path.name"`` of every tensor that weight norm (alone) computes in ``model`` → its
    parametrization chain (holding ``original0`` = g and ``original1`` = v)."""
    found: dict[str, nn.Module] = {}
    for path, module in model.named_modules():
        chains = module._modules.get("parametrizations")
        if not isinstance(chains, nn.ModuleDict):
            continue
        for name, chain in chains.items():
            if isinstance(chain, nn.ModuleList) and len(chain) == 1 and \
                    type(chain[0]) is _WeightNorm:
                found[f"{path}.{name}" if path else name] = chain
    return found


def weight_grad(chain: nn.Module, g_grad: Tensor, v_grad: Tensor) -> Tensor:
    """``∂L/∂w`` of the weight ``chain`` computes, from ``∂L/∂g`` and ``∂L/∂v``."""
    g, v = chain.original0, chain.original1
    assert isinstance(g, Tensor) and isinstance(v, Tensor)
    dim = chain[0].dim  # type: ignore[index]
    with torch.no_grad():
        g, v = g.detach().to(v_grad.dtype), v.detach().to(v_grad.dtype)
        norm = torch.norm_except_dim(v, 2, -1 if dim is None else dim)
        scale = torch.where(g != 0, norm / torch.where(g != 0, g, 1), 0)
        return scale * v_grad + g_grad * v / norm.clamp_min(torch.finfo(v.dtype).tiny)


def leaf_grad_weight(chain: nn.Module) -> Tensor | None:
    """``∂L/∂w`` from the ``.grad`` the leaves hold (after the user's ``loss.backward()``),
    or the weight's statistic :func:`calibrated <prunekit.importance.calibrated>` holds;
    None where ``v`` has no ``.grad`` (a frozen ``g`` counts as a zero gradient)."""
    held = _HELD.get(id(chain))
    if held is not None:
        return held
    g, v = chain.original0, chain.original1
    assert isinstance(g, Tensor) and isinstance(v, Tensor)
    if v.grad is None:
        return None
    g_grad = g.grad if g.grad is not None else torch.zeros_like(g, dtype=v.grad.dtype)
    return weight_grad(chain, g_grad, v.grad)


_HELD: dict[int, Tensor] = {}  # id(chain) -> the weight's statistic, inside calibrated()


@contextmanager
def holding(stats: Mapping[nn.Module, Tensor]) -> Iterator[None]:
    """Hold the statistic of each chain's weight for the block (what was held before comes
    back on exit: blocks nest)."""
    saved = {id(chain): _HELD.get(id(chain)) for chain in stats}
    _HELD.update({id(chain): stat for chain, stat in stats.items()})
    try:
        yield
    finally:
        for key, stat in saved.items():
            if stat is None:
                _HELD.pop(key, None)
            else:
                _HELD[key] = stat
