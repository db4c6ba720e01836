"""Fine-tuning under ``torchrun`` with DistributedDataParallel (gloo on CPU, NCCL on GPU).

Launch one process per device::

    torchrun --nproc_per_node=2 train.py          # one machine
    # in train.py
    info = init_distributed()                     # reads RANK / WORLD_SIZE / LOCAL_RANK
    history = finetune_distributed(model, dataset, epochs, batch_size=64, config=cfg,
                                   callbacks=[Pruner(schedule)])
    cleanup()

Masks are identical on every rank by construction: every mask change made by
:class:`~prunekit.train.callbacks.Pruner` is broadcast from rank 0
(:func:`broadcast_masks`), and RigL's dense gradients are averaged over ranks first.
:func:`mask_checksums` all-gathers a checksum per rank to verify it. Only rank 0 writes
files (checkpoints, TensorBoard, W&B): see :func:`is_main_process`. Without an initialised
process group every helper here is a no-op, so single-process code needs no branches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from prunekit.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Rank 0, or the only process; the one that writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the ``torchrun`` job described by the environment (RANK, WORLD_SIZE, ...).

    ``backend`` defaults to NCCL when CUDA is available and gloo otherwise; on GPU each
    process uses ``cuda:LOCAL_RANK``.
    """
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise ConfigError(
            f"environment variables {missing} are not set; launch with "
            f"torchrun --nproc_per_node=N script.py (or python -m torch.distributed.run)"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local_rank}" if cuda and backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def cleanup() -> None:
    """Leave the process group (after a barrier, so no rank exits while others write)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel, else ``model`` itself."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        inner = model.module
        return inner if isinstance(inner, nn.Module) else model
    return model


def broadcast_masks(model: nn.Module, src: int = 0) -> None:
    """Copy every prunekit mask from rank ``src`` to all ranks (no-op outside a job)."""
    if not active():
        return
    from prunekit.sparse.masks import masked_tensors

    for mask in masked_tensors(unwrap(model)).values():
        as_bytes = mask.to(torch.uint8)
        dist.broadcast(as_bytes, src=src)
        mask.copy_(as_bytes.to(torch.bool))


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks in place (no-op outside a job); returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def model_checksum(model: nn.Module) -> tuple[float, float]:
    """(sum of weighted mask entries, sum of |weights|·index weights) — equal iff identical,
    up to collisions that a random perturbation makes vanishingly unlikely."""
    from prunekit.sparse.masks import masked_tensors

    model = unwrap(model)
    masks = sum(
        float((m.reshape(-1).double() * torch.arange(1, m.numel() + 1).double()).sum())
        for m in masked_tensors(model).values()
    )
    weights = sum(
        float((p.detach().reshape(-1).double().cpu()
               * torch.arange(1, p.numel() + 1).double()).sum())
        for p in model.state_dict().values() if p.is_floating_point()
    )
    return masks, weights


def mask_checksums(model: nn.Module) -> list[tuple[float, float]]:
    """Every rank's :func:`model_checksum`, gathered on all ranks (one entry outside a job)."""
    mine = model_checksum(model)
    if not active():
        return [mine]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return [tuple(g) for g in gathered]


def distributed_loader(
    dataset: Dataset[Any], batch_size: int, *, seed: int = 0, shuffle: bool = True,
    drop_last: bool = False,
) -> DataLoader[Any]:
    """A DataLoader over this rank's shard (a DistributedSampler; plain loader outside a job)."""
    if not active():
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                          drop_last=drop_last)
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)


def finetune_distributed(
    model: nn.Module,
    dataset: Dataset[Any],
    epochs: int,
    *,
    batch_size: int,
    device_ids: Sequence[int] | None = None,
    eval_loader: Iterable[Any] | None = None,
    **finetune_kwargs: Any,
) -> Any:
    """:func:`~prunekit.train.finetune.finetune` on this rank's shard of ``dataset`` under DDP.

    Call after :func:`init_distributed`. Every :class:`~prunekit.train.callbacks.Pruner` in
    ``callbacks`` first registers its (all-True) masks, because DDP binds the parameters it
    sees when it wraps the model; later mask updates are broadcast from rank 0. Returns the
    History (evaluation, if any, runs on every rank over the full ``eval_loader``).
    """
    from prunekit.train.callbacks import Pruner, SamplerEpoch
    from prunekit.train.finetune import finetune

    if not active():
        loader = distributed_loader(dataset, batch_size)
        return finetune(model, loader, epochs, eval_loader=eval_loader, **finetune_kwargs)
    for callback in finetune_kwargs.get("callbacks", ()):
        if isinstance(callback, Pruner):
            callback.prepare(model)  # masks must exist before DDP wraps the model
    info_device = next(model.parameters()).device
    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=list(device_ids) if device_ids is not None else (
            [info_device.index] if info_device.type == "cuda" else None))
    loader = distributed_loader(dataset, batch_size)
    finetune_kwargs.setdefault("progress", False)
    callbacks = [SamplerEpoch(loader), *finetune_kwargs.pop("callbacks", ())]
    return finetune(ddp, loader, epochs, eval_loader=eval_loader, callbacks=callbacks,
                    **finetune_kwargs)
