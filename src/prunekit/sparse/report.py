"""Per-tensor sparsity of a model: the fraction of zeros each weight really holds."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from prunekit.sparse.masks import masked_tensors
from prunekit.sparse.selection import DEFAULT_LAYERS, check_layers


def sparsity_report(
    model: nn.Module, layers: Iterable[type[nn.Module]] = DEFAULT_LAYERS
) -> dict[str, float]:
    """Full tensor name → fraction of zeros in the effective weight, in module order.

    Covers every masked tensor plus the ``weight`` of every module of type ``layers``
    (masked or not), so a dense model reports 0.0 per layer rather than nothing.
    """
    layer_types = check_layers(layers)
    masked = masked_tensors(model)
    report: dict[str, float] = {}
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            names = [n for n in masked if n.rpartition(".")[0] == mod_name]
            has_weight = isinstance(getattr(module, "weight", None), torch.Tensor)
            if isinstance(module, layer_types) and has_weight and f"{prefix}weight" not in names:
                names.append(f"{prefix}weight")
            for name in names:
                tensor = getattr(module, name.rpartition(".")[2])
                numel = tensor.numel()
                report[name] = 0.0 if numel == 0 else (numel - int(tensor.count_nonzero())) / numel
    return report
