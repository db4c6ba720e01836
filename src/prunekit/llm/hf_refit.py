"""Block-wise least-squares refit of the layers fed by removed heads and FFN neurons.

The same fit as :func:`prunekit.train.recover.reconstruct` (``min ‖[X, 1] [W; b] − Y‖²``
plus a ridge term, inputs ``X`` from the pruned model, targets ``Y`` from the dense one, a
layer replaced only when its error drops) but run block by block the way the LLM driver
runs: each block's inputs are captured once, and only that block is re-run per refitted
layer, so the cost is a few model forwards in total instead of two per layer.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prunekit._inputs import run_model
from prunekit.errors import ConfigError
from prunekit.llm.blocks import BlockInput, capture_block_inputs, find_blocks, hidden_of
from prunekit.train.recover import LayerFit, Reconstruction

__all__ = ["capture_inputs", "refit_blocks"]


class _Feeder(nn.Module):
    """Calls ``model`` on the i-th stored batch (dicts or tensors), so that
    :func:`capture_block_inputs` can be driven by plain index tensors."""

    def __init__(self, model: nn.Module, batches: Sequence[Any]) -> None:
        super().__init__()
        self.model, self.batches = model, list(batches)

    def forward(self, index: Tensor) -> Any:
        batch = self.batches[int(index.reshape(-1)[0])]
        if isinstance(batch, Mapping) and "use_cache" not in batch:
            batch = {**batch, "use_cache": False} if _takes_cache(self.model) else batch
        return run_model(self.model, batch)


def _takes_cache(model: nn.Module) -> bool:
    return "use_cache" in inspect.signature(model.forward).parameters


def _matrix(layer: nn.Module) -> Tensor:
    """The layer as ``[out, in]`` (a transformers Conv1D stores ``[in, out]``)."""
    weight = getattr(layer, "weight")  # noqa: B009
    return weight.T if not isinstance(layer, nn.Linear) else weight


def _set(layer: nn.Module, solution: Tensor, has_bias: bool) -> None:
    features = solution.shape[0] - 1
    weight = getattr(layer, "weight")  # noqa: B009
    new = solution[:features].T if isinstance(layer, nn.Linear) else solution[:features]
    with torch.no_grad():
        weight.copy_(new.to(weight.dtype))
        if has_bias:
            layer.bias.copy_(solution[features].to(weight.dtype))  # type: ignore[operator]


def capture_inputs(model: nn.Module, blocks: nn.ModuleList,
                   batches: Sequence[Any]) -> list[BlockInput]:
    """What ``blocks[0]`` receives for each batch (token-id tensors or input dicts)."""
    feeder = _Feeder(model, batches)
    return capture_block_inputs(feeder, blocks, [torch.tensor([i]) for i in range(len(batches))])


def _fit(layer: nn.Module, inputs: list[Tensor], targets: list[Tensor],
         ridge: float) -> tuple[float, float]:
    bias = getattr(layer, "bias", None)
    has_bias = isinstance(bias, Tensor)
    rows = [torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) for x in inputs]
    gram = sum(x.T @ x for x in rows)
    cross = sum(x.T @ y for x, y in zip(rows, targets, strict=True))
    assert isinstance(gram, Tensor) and isinstance(cross, Tensor)
    total = sum(float(y.square().sum()) for y in targets)
    weight = _matrix(layer).detach().double()
    last = bias.detach().double() if isinstance(bias, Tensor) else weight.new_zeros(weight.shape[0])
    current = torch.cat([weight.T, last[None]], 0)

    def error(s: Tensor) -> float:
        sq = float((s * (gram @ s)).sum() - 2 * (s * cross).sum()) + total
        return max(sq, 0.0) / max(total, 1e-30)

    features = gram.shape[0] - 1
    damped = gram.clone()
    scale = float(gram.diagonal()[:features].mean()) if features else 1.0
    damped[range(features), range(features)] += ridge * max(scale, 1e-12)
    if has_bias:
        solution = torch.linalg.solve(damped, cross)
    else:
        solution = torch.cat([torch.linalg.solve(damped[:features, :features], cross[:features]),
                              cross.new_zeros(1, cross.shape[1])])
    before, after = error(current), error(solution)
    if after < before:
        _set(layer, solution, has_bias)
        return before, after
    return before, before


def _record(layer: nn.Module, store: list[Tensor], *, output: bool) -> Any:
    def hook(_: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
        value = out if output else args[0]
        store.append(value.detach().reshape(-1, value.shape[-1]).double())
    return layer.register_forward_hook(hook)


def refit_blocks(pruned: nn.Module, dense: nn.Module, plan: Mapping[str, Any],
                 batches: Sequence[Any], *, ridge: float = 1e-4,
                 min_rows: float = 2.0) -> Reconstruction:
    """Refit, in place and in block order, every layer of ``pruned`` whose input features
    ``plan`` removed, on calibration ``batches`` (token-id tensors or input dicts). A layer
    seen on fewer than ``min_rows`` calibration tokens per input feature is left as it is
    (and listed in ``skipped``): with too few rows the fit memorises the calibration set
    and generalises worse than no refit."""
    modules = plan.get("modules")
    if not isinstance(modules, Mapping):
        raise ConfigError("plan must be a structured pruning plan with a 'modules' entry")
    path, pruned_blocks = find_blocks(pruned)
    _, dense_blocks = find_blocks(dense, path)
    fits: list[LayerFit] = []
    skipped: dict[str, str] = {}
    with torch.no_grad():
        p_in = capture_inputs(pruned, pruned_blocks, batches)
        d_in = capture_inputs(dense, dense_blocks, batches)
        for i, (p_block, d_block) in enumerate(zip(pruned_blocks, dense_blocks, strict=True)):
            prefix = f"{path}.{i}."
            names = [n for n, _ in p_block.named_modules()
                     if "in" in modules.get(prefix + n, {}).get("keep", {})]
            targets: dict[str, list[Tensor]] = {n: [] for n in names}
            handles = [_record(d_block.get_submodule(n), targets[n], output=True) for n in names]
            try:
                d_out = [hidden_of(d_block(*x.args, **x.kwargs)) for x in d_in]
            finally:
                for handle in handles:
                    handle.remove()
            for name in names:
                layer = p_block.get_submodule(name)
                if not hasattr(layer, "weight") or (
                        not isinstance(layer, nn.Linear) and not hasattr(layer, "nf")):
                    skipped[prefix + name] = f"no refit for {type(layer).__name__}"
                    continue
                xs: list[Tensor] = []
                handle = _record(layer, xs, output=False)
                try:
                    for x in p_in:
                        p_block(*x.args, **x.kwargs)
                finally:
                    handle.remove()
                seen, features = sum(len(x) for x in xs), xs[0].shape[1]
                if seen < min_rows * (features + 1):
                    skipped[prefix + name] = (
                        f"{seen} calibration tokens for {features} input features; pass at "
                        f"least {math.ceil(min_rows * (features + 1))} tokens in calib")
                    continue
                before, after = _fit(layer, xs, targets[name], ridge)
                fits.append(LayerFit(prefix + name, before, after))
            p_in = [x.with_hidden(hidden_of(p_block(*x.args, **x.kwargs))) for x in p_in]
            d_in = [x.with_hidden(out) for x, out in zip(d_in, d_out, strict=True)]
    return Reconstruction(tuple(fits), skipped)
