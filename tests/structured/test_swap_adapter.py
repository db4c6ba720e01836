"""A third-party :class:`SwapAdapter` needs only ``swap``; ``swap_type`` is optional."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prunekit.structured.adapters import register_adapter
from prunekit.structured.adapters_linear import LinearAdapter
from prunekit.structured.plan import SwapAdapter, SwapTypeAdapter
from prunekit.structured.pruning import prune


class _FrozenWidthLinear(nn.Linear):
    """A layer type that cannot be cut itself: pruning swaps in a plain ``_CutLinear``."""


class _CutLinear(nn.Linear):
    pass


class _SwapOnly(LinearAdapter):
    """The SwapAdapter contract before swap_type existed: ``swap`` alone."""

    def swap(self, module: nn.Module, keep: Mapping[str, Tensor]) -> nn.Module | None:
        if not keep or isinstance(module, _CutLinear):
            return None
        assert isinstance(module, nn.Linear)
        new = _CutLinear.__new__(_CutLinear)
        new.__dict__.update(module.__dict__)  # shares the parameters, as swap must
        new._parameters = dict(module._parameters)  # type: ignore[assignment]
        return new


def test_an_adapter_with_swap_alone_still_swaps() -> None:
    adapter = _SwapOnly()
    assert isinstance(adapter, SwapAdapter) and not isinstance(adapter, SwapTypeAdapter)
    register_adapter(_FrozenWidthLinear, adapter)
    torch.manual_seed(0)
    model = nn.Sequential(_FrozenWidthLinear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 6)
    result = prune(model, x, ratio=0.5)
    assert type(result.model[0]) is _CutLinear
    assert result.plan["modules"]["0"]["swap"] == "_CutLinear"
    assert result.model[0].out_features == 4 and result.model(x).shape == (4, 3)
