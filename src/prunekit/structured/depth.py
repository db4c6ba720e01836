"""Depth pruning: replace whole residual blocks (or transformer layers) by identity.

A block is a candidate when it maps a tensor to a tensor of the same shape (its first
input): removing it keeps every shape downstream. Blocks are ranked by how much they change
their input on the example inputs, ``‖f(x) − x‖ / ‖x‖`` (the "block influence" idea of
ShortGPT, Men et al. 2024): the blocks that change it least go first. The result carries a
plan with a ``"skip"`` list that ``replay_plan`` reproduces on a fresh model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prunekit._caches import copy_model
from prunekit._inputs import ExampleInputs, run_model, walk_tensors
from prunekit.errors import ConfigError, PruneValidationError
from prunekit.graph.modes import eval_mode
from prunekit.graph.replay import Record, replayed
from prunekit.structured.plan import PLAN_FORMAT, SkipBlock, apply_plan

__all__ = ["DepthResult", "SkipBlock", "block_scores", "prune_depth"]


@dataclass(frozen=True)
class DepthResult:
    """The shallower model, the blocks removed, every candidate's score and the plan."""

    model: nn.Module
    removed: tuple[str, ...]
    scores: Mapping[str, float]
    plan: dict[str, Any]


def block_scores(model: nn.Module, example_inputs: ExampleInputs,
                 blocks: Iterable[nn.Module | str] | None = None) -> dict[str, float]:
    """``‖f(x) − x‖ / ‖x‖`` of every candidate block on the example inputs (lower = more
    removable). ``blocks`` defaults to every child of a ``Sequential``/``ModuleList`` that
    has parameters and keeps its input's shape."""
    names = {id(m): n for n, m in model.named_modules()}
    chosen = None if blocks is None else {_name(b, names) for b in blocks}
    containers = (nn.Sequential, nn.ModuleList)
    candidates: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not name or not any(True for _ in module.parameters()):
            continue
        parent = name.rpartition(".")[0]
        in_container = isinstance(model.get_submodule(parent) if parent else model, containers)
        if (chosen is None and in_container) or (chosen is not None and name in chosen):
            candidates[name] = module
    scores: dict[str, float] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            x = args[0] if args else None
            if isinstance(x, Tensor) and isinstance(out, Tensor) and out.shape == x.shape:
                change = (out.float() - x.float()).norm() / x.float().norm().clamp(min=1e-12)
                scores[name] = max(scores.get(name, 0.0), float(change))
            else:
                scores[name] = float("nan")
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in candidates.items()]
    try:
        with torch.no_grad(), eval_mode(model):
            run_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    usable = {n: s for n, s in scores.items() if s == s}  # NaN: shape changes, not removable
    if chosen is not None and set(chosen) - set(usable):
        bad = sorted(set(chosen) - set(usable))
        raise ConfigError(f"blocks {bad} cannot be replaced by identity: they are not called "
                          f"or their output shape differs from their input's")
    return usable


def prune_depth(model: nn.Module, example_inputs: ExampleInputs, *, remove: int | float,
                blocks: Iterable[nn.Module | str] | None = None,
                inplace: bool = False) -> DepthResult:
    """Replace the ``remove`` least influential blocks (an int, or a fraction of the
    candidates) by :class:`SkipBlock`, checked by a forward pass with unchanged output
    shapes; the user's model is untouched unless ``inplace=True`` (and on any failure)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    scores = block_scores(model, example_inputs, blocks)
    # a block nested in a chosen block is not removed twice
    ranked = sorted(scores, key=lambda n: scores[n])
    count = _count(remove, len(ranked))
    removed: list[str] = []
    for name in ranked:
        if len(removed) == count:
            break
        if not any(name.startswith(r + ".") or r.startswith(name + ".") for r in removed):
            removed.append(name)
    plan: dict[str, Any] = {"format": PLAN_FORMAT, "modules": {}, "params": {}, "attrs": {},
                            "skip": sorted(removed)}
    # a box count or branch that depends on values is put back in the check (graph/replay)
    with Record(model) as recorded:
        reference = _shapes(model, example_inputs)
    pruned = copy_model(model)
    try:
        apply_plan(pruned, plan)
        shapes = replayed(recorded.recording, pruned, lambda: _shapes(pruned, example_inputs))
    except Exception as exc:
        raise PruneValidationError(
            f"the model with {removed} skipped failed its forward check ({exc}); your model "
            f"is unchanged. Pass blocks=[...] to choose removable blocks") from exc
    if shapes != reference:
        raise PruneValidationError(f"skipping {removed} changed the output shapes from "
                                   f"{reference} to {shapes}; your model is unchanged")
    if inplace:
        model.__dict__.update(pruned.__dict__)
        pruned = model
    return DepthResult(pruned, tuple(sorted(removed)), scores, plan)


def _count(remove: int | float, available: int) -> int:
    if isinstance(remove, bool) or not isinstance(remove, (int, float)) or remove < 0:
        raise ConfigError(f"remove={remove!r} must be a block count (int) or a fraction "
                          f"in [0, 1)")
    if isinstance(remove, float):
        if remove >= 1:
            raise ConfigError(f"remove={remove!r} as a fraction must be below 1")
        return int(remove * available)
    if remove > available:
        raise ConfigError(f"remove={remove} but only {available} blocks can be removed")
    return remove


def _name(block: nn.Module | str, names: Mapping[int, str]) -> str:
    if isinstance(block, str) and block in names.values():
        return block
    if isinstance(block, nn.Module) and id(block) in names:
        return names[id(block)]
    raise ConfigError(f"blocks must list submodules of the model (or their paths), "
                      f"got {block!r}")


def _shapes(model: nn.Module, example_inputs: ExampleInputs) -> list[tuple[str, tuple[int, ...]]]:
    with torch.no_grad(), eval_mode(model):
        out = run_model(model, example_inputs)
    return [(path, tuple(t.shape)) for path, t in walk_tensors(out)]
