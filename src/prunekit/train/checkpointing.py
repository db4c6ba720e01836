"""Training checkpoints for ``finetune(resume=...)``: everything a run needs to continue exactly.

One file per checkpoint, written atomically (temporary sibling, fsync, rename) with
``torch.save`` of tensors and plain Python values only, and read back with
``torch.load(weights_only=True)`` — never plain unpickling. It holds the model's
``state_dict`` (masks included), the optimizer's and LR scheduler's states, the CPU and CUDA
RNG states, the loader's shuffling generator, the epoch and step reached, and the History
so far. Masks missing on the model being resumed are re-created from the checkpoint.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io.atomic import atomic_path

FORMAT = "prunekit.train.checkpoint/1"
_MASK_KEY = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.(\d+)\.mask$")


class ResumeError(PrunekitError, ValueError):
    """A checkpoint cannot be resumed onto this model / optimizer."""


@dataclass
class TrainingState:
    """What a checkpoint restores beyond the model and optimizer."""

    epoch: int
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    stale_epochs: int = 0


def loader_generator(loader: Any) -> torch.Generator | None:
    """The generator that shuffles ``loader`` (a DataLoader's sampler's), if any."""
    sampler = getattr(loader, "sampler", None)
    gen = getattr(sampler, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    state: TrainingState,
    loader: Any = None,
) -> Path:
    """Atomically write a resumable checkpoint of the run to ``path``; returns the path."""
    gen = loader_generator(loader)
    payload = {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "loader_generator": None if gen is None else gen.get_state(),
        "epoch": state.epoch,
        "step": state.step,
        "history": state.history,
        "best_metric": state.best_metric,
        "stale_epochs": state.stale_epochs,
    }
    target = Path(path)
    with atomic_path(target) as tmp:
        torch.save(payload, tmp)
    return target


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's contents, loaded with ``weights_only=True``."""
    target = Path(path)
    if not target.is_file():
        raise ResumeError(
            f"resume={str(path)!r} is not a checkpoint file; pass a file written by "
            f"finetune(config=FinetuneConfig(checkpoint_dir=...)), e.g. '<dir>/last.pt'"
        )
    payload = torch.load(target, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ResumeError(f"{target} is not a prunekit training checkpoint ({FORMAT})")
    return payload


def restore_checkpoint(
    payload: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loader: Any = None,
) -> TrainingState:
    """Load a :func:`read_checkpoint` payload into the run's objects and the RNGs."""
    from prunekit.sparse.masks import apply_mask, get_mask

    model_state: dict[str, torch.Tensor] = payload["model"]
    for key, mask in model_state.items():
        match = _MASK_KEY.match(key)
        if match is None:
            continue
        module_name, tensor = match.group(1) or "", match.group(2)
        module = model.get_submodule(module_name)
        if get_mask(module, tensor) is None:
            apply_mask(module, tensor, mask)
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(payload["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ResumeError(
            f"the checkpoint does not fit this model/optimizer ({exc}); resume with the "
            f"model and FinetuneConfig of the interrupted run (structured schedules change "
            f"the architecture and cannot be resumed onto the unpruned model)"
        ) from exc
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["rng_cpu"])
    if payload["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng_cuda"])
    gen = loader_generator(loader)
    if gen is not None and payload["loader_generator"] is not None:
        gen.set_state(payload["loader_generator"])
    return TrainingState(
        epoch=int(payload["epoch"]),
        step=int(payload["step"]),
        history=list(payload["history"]),
        best_metric=payload["best_metric"],
        stale_epochs=int(payload["stale_epochs"]),
    )
