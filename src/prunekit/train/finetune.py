"""A plain, seeded training loop (``finetune``) and its evaluation (``evaluate``).

Masked models need nothing special: prunekit masks are parametrizations, so the optimizer
updates the hidden original tensor and the effective weight stays exactly zero where
masked. The same loop trains a dense model from scratch.

A loss function has the signature ``loss_fn(model, batch) -> scalar Tensor``, with
``batch`` exactly as the loader yields it (already moved to the device). The default,
:func:`cross_entropy_loss`, expects ``(inputs, targets)`` batches.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from prunekit._inputs import model_device, move_inputs
from prunekit.errors import ConfigError, DataError, check_choice
from prunekit.train.callbacks import Callback, EarlyStopping
from prunekit.train.checkpointing import (
    TrainingState,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from prunekit.train.distributed import is_main_process
from prunekit.train.logging import EpochStats, History, ProgressReporter, RunningLoss, loggers

LossFn = Callable[[nn.Module, Any], torch.Tensor]
OptimizerName = Literal["sgd", "adam", "adamw"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)


def _check_number(name: str, value: object, *, low: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < low or (low_open and value == low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ConfigError(f"{name}={value!r} is out of range; it must be finite and {bound}")


def _check_int(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ConfigError(f"{name}={value!r} is out of range; it must be an int >= {low}")
    return value


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of :func:`finetune`.

    ``momentum`` applies to SGD only (Adam/AdamW use their default betas); ``weight_decay``
    is L2 for SGD/Adam and decoupled for AdamW. ``cosine`` anneals the learning rate per
    step from ``lr`` to 0 over the run. ``device=None`` trains where the model already is.
    ``seed=None`` leaves the global RNG alone; an int makes shuffling and dropout
    reproducible without changing the caller's RNG state. ``grad_clip`` is a max global
    gradient norm. ``log_every`` prints the running loss every that many batches
    (0: one summary line per epoch only). ``num_threads`` sets torch's intra-op CPU threads
    for the run and restores the previous value afterwards (None: leave it); small models
    on a busy machine often train several times faster with 1.

    ``patience`` stops early after that many epochs without a better eval accuracy (needs
    an eval loader). ``checkpoint_dir`` writes ``<dir>/last.pt`` atomically after every
    epoch, for ``finetune(resume=...)``. ``tensorboard`` (a log directory) and ``wandb``
    (a project name, offline mode) turn on those loggers; both are optional extras.
    """

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: OptimizerName = "sgd"
    cosine: bool = True
    device: str | None = None
    seed: int | None = 0
    grad_clip: float | None = None
    log_every: int = 0
    num_threads: int | None = None
    patience: int | None = None
    checkpoint_dir: str | None = None
    tensorboard: str | None = None
    wandb: str | None = None

    def __post_init__(self) -> None:
        _check_number("lr", self.lr, low=0.0, low_open=True)
        _check_number("momentum", self.momentum, low=0.0)
        if self.momentum >= 1.0:
            raise ConfigError(f"momentum={self.momentum!r} must lie in [0, 1) (e.g. 0.9)")
        _check_number("weight_decay", self.weight_decay, low=0.0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if not isinstance(self.cosine, bool):
            raise TypeError(f"cosine must be a bool, got {type(self.cosine).__name__}")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ConfigError(
                    f"device={self.device!r} is not a torch device (e.g. 'cpu', 'cuda:0')"
                ) from exc
        if self.seed is not None:
            _check_int("seed", self.seed, low=0)
        if self.grad_clip is not None:
            _check_number("grad_clip", self.grad_clip, low=0.0, low_open=True)
        _check_int("log_every", self.log_every, low=0)
        if self.num_threads is not None:
            _check_int("num_threads", self.num_threads, low=1)
        if self.patience is not None:
            _check_int("patience", self.patience, low=1)
        for name in ("checkpoint_dir", "tensorboard", "wandb"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"{name} must be a non-empty str or None, got {value!r}")


@dataclass(frozen=True)
class EvalResult:
    """Top-1 ``accuracy`` in [0, 1] and the example-weighted mean ``loss`` over a loader."""

    accuracy: float
    loss: float
    num_examples: int


def _unpack(batch: Any) -> tuple[Any, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        length = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        raise DataError(
            f"expected batches of (inputs, targets), got a {type(batch).__name__}{length}; "
            "pass loss_fn=lambda model, batch: ... for other batch layouts"
        )
    return batch[0], batch[1]


def cross_entropy_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Default loss: ``cross_entropy(model(inputs), targets)`` on an ``(inputs, targets)`` batch."""
    inputs, targets = _unpack(batch)
    return F.cross_entropy(model(inputs), targets)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (tuple, list)) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    return 1


def _check_loader(name: str, loader: object) -> Iterable[Any]:
    if not isinstance(loader, Iterable):
        raise TypeError(
            f"{name} must be an iterable of batches (e.g. a DataLoader), got "
            f"{type(loader).__name__}"
        )
    if isinstance(loader, Sized) and len(loader) == 0:
        raise DataError(
            f"{name} is empty (0 batches); check the data set, and drop_last=True with a "
            "batch_size larger than the data set"
        )
    return loader


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


@contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count for the block, then put the old one back."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if num_threads is not None:
            torch.set_num_threads(previous)


class _TrainingModes:
    """Remember every submodule's train/eval flag and put them back afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self._modes = [(m, m.training) for m in model.modules()]

    def restore(self) -> None:
        for module, training in self._modes:
            module.training = training


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[Any], *, loss_fn: LossFn | None = None
) -> EvalResult:
    """Accuracy (argmax over dim 1 vs. integer targets) and mean loss of ``model`` on ``loader``.

    Batches must be ``(inputs, targets)``; ``loss_fn`` replaces the default cross-entropy
    (it is called as ``loss_fn(model, batch)``, an extra forward pass). The model runs in
    eval mode on its own device; every submodule's train/eval mode is restored afterwards.
    """
    model = _check_model(model)
    loader = _check_loader("loader", loader)
    device = model_device(model)
    modes = _TrainingModes(model)
    model.eval()
    correct = total = examples = 0
    loss_sum = 0.0
    try:
        for raw in loader:
            batch = move_inputs(raw, device)
            inputs, targets = _unpack(batch)
            outputs = model(inputs)
            loss = F.cross_entropy(outputs, targets) if loss_fn is None else loss_fn(model, batch)
            n = _batch_size(targets)
            loss_sum += float(loss) * n
            examples += n
            correct += int((outputs.argmax(dim=1) == targets).sum())
            total += targets.numel()
    finally:
        modes.restore()
    if examples == 0:
        raise DataError("loader yielded no batches; evaluate needs at least one")
    return EvalResult(accuracy=correct / total, loss=loss_sum / examples, num_examples=examples)


def _make_optimizer(
    model: nn.Module, config: FinetuneConfig, loss_fn: object = None
) -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters and, when ``loss_fn`` is
    an ``nn.Module`` (e.g. DistillationLoss with feature adapters), the loss's own."""
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(loss_fn, nn.Module):
        params += [p for p in loss_fn.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("model has no parameters with requires_grad=True; nothing to train")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _train_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: LossFn,
    config: FinetuneConfig,
    device: torch.device,
    report: Callable[[int, Callable[[], float]], None],
    callbacks: Sequence[Callback],
    step: int,
) -> tuple[float, int, int]:
    """One pass over ``loader``; returns (example-weighted mean loss, batches, global step).

    Callbacks see every step after ``optimizer.step()`` (the loss is read from the device
    only when there are callbacks)."""
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    running = RunningLoss(device)
    batches = 0
    for raw in loader:
        batch = move_inputs(raw, device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        running.add(loss, _batch_size(batch))
        batches += 1
        step += 1
        if callbacks:
            value = float(loss.detach())
            for callback in callbacks:
                callback.on_step(step, value)
            params = [p for group in optimizer.param_groups for p in group["params"]]
        report(batches, running.value)
    return running.value(), batches, step


def _check_finetune_args(
    model: object,
    epochs: object,
    config: object,
    train_loader: object,
    eval_loader: object,
    optimizer: object,
    loss_fn: object,
    callbacks: object,
) -> FinetuneConfig:
    """Validate :func:`finetune`'s arguments; return the config to use."""
    _check_model(model)
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise TypeError(f"epochs must be an int, got {type(epochs).__name__} {epochs!r}")
    if epochs < 0:
        raise ConfigError(f"epochs={epochs!r} must be >= 0 (0 trains nothing)")
    config = FinetuneConfig() if config is None else config
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    _check_loader("train_loader", train_loader)
    if eval_loader is not None:
        _check_loader("eval_loader", eval_loader)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {loss_fn!r}")
    if not isinstance(callbacks, Sequence) or not all(
        isinstance(c, Callback) for c in callbacks
    ):
        raise TypeError(
            f"callbacks must be a list of prunekit Callback objects (e.g. Pruner(...)), got "
            f"{callbacks!r}"
        )
    if config.patience is not None and eval_loader is None:
        raise ConfigError(
            f"patience={config.patience} needs eval_loader=...: early stopping watches the "
            f"eval accuracy"
        )
    return config


def finetune(
    model: nn.Module,
    train_loader: Iterable[Any],
    epochs: int,
    *,
    config: FinetuneConfig | None = None,
    eval_loader: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    resume: str | os.PathLike[str] | None = None,
) -> History:
    """Train ``model`` in place for ``epochs`` passes over ``train_loader``; return its History.

    The optimizer is built from ``config`` unless one is given (the cosine schedule, if on,
    then drives that optimizer's learning rate). ``loss_fn(model, batch)`` defaults to
    cross-entropy on ``(inputs, targets)``. With ``eval_loader`` the model is evaluated
    after every epoch. ``config.device`` moves the model there (in place). The model is in
    train mode while training; every submodule's train/eval mode is restored at the end.

    ``callbacks`` (e.g. a :class:`~prunekit.train.callbacks.Pruner`) are called at train
    begin, after every optimizer step and at every epoch's end. ``resume`` is a checkpoint
    written by an earlier call with ``config.checkpoint_dir``: model, optimizer, LR
    scheduler, RNG and loader-shuffling states and the history are restored and training
    continues after the checkpoint's epoch, reaching the weights an uninterrupted run with
    the same arguments reaches (``epochs`` is the total, as in the first call).
    """
    config = _check_finetune_args(
        model, epochs, config, train_loader, eval_loader, optimizer, loss_fn, callbacks
    )
    if epochs == 0:
        return History()

    if config.device is not None:
        model.to(config.device)
    device = model_device(model)
    optimizer = optimizer or _make_optimizer(model, config, loss_fn)
    steps = len(train_loader) if isinstance(train_loader, Sized) else None
    scheduler = None
    if config.cosine:
        # per step when the loader's length is known, else per epoch
        horizon = epochs * steps if steps else epochs
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=horizon)
    eval_loss_fn = loss_fn  # None: evaluate's own cross-entropy, no second forward pass
    loss_fn = loss_fn or cross_entropy_loss
    hooks = [*callbacks, *loggers(config.tensorboard, config.wandb, asdict(config))]
    rng_devices = [device] if device.type == "cuda" else []
    modes = _TrainingModes(model)
    payload = None if resume is None else read_checkpoint(resume)
    try:
        with (
            torch.random.fork_rng(devices=rng_devices, enabled=config.seed is not None),
            _torch_threads(config.num_threads),
            ProgressReporter(progress, epochs, steps, config.log_every,
                             Console(highlight=False)) as reporter,
        ):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            state = TrainingState(epoch=0, step=0)
            if payload is not None:
                state = restore_checkpoint(payload, model, optimizer, scheduler, train_loader)
            records = [EpochStats(**entry) for entry in state.history]
            stopper = EarlyStopping(config.patience, state)
            for callback in hooks:
                callback.on_train_begin(model, optimizer)
            for epoch in range(state.epoch + 1, epochs + 1):
                for callback in hooks:
                    callback.on_epoch_begin(epoch)
                lr = float(optimizer.param_groups[0]["lr"])
                reporter.start_epoch(epoch)
                started = time.perf_counter()
                train_loss, done, state.step = _train_epoch(
                    model,
                    train_loader,
                    optimizer,
                    scheduler if steps else None,
                    loss_fn,
                    config,
                    device,
                    partial(reporter.step, epoch),
                    hooks,
                    state.step,
                )
                seconds = time.perf_counter() - started
                if done == 0:
                    raise DataError(f"train_loader yielded no batches in epoch {epoch}")
                if scheduler is not None and not steps:
                    scheduler.step()
                if not math.isfinite(train_loss):
                    raise ConfigError(
                        f"train loss became {train_loss} in epoch {epoch} with lr={lr:g}; "
                        "lower config.lr or set config.grad_clip (e.g. 1.0)"
                    )
                result, eval_seconds = None, 0.0
                if eval_loader is not None:
                    started = time.perf_counter()
                    result = evaluate(model, eval_loader, loss_fn=eval_loss_fn)
                    eval_seconds = time.perf_counter() - started
                stats = EpochStats(
                    epoch=epoch,
                    train_loss=train_loss,
                    lr=lr,
                    seconds=seconds,
                    eval_seconds=eval_seconds,
                    eval_accuracy=None if result is None else result.accuracy,
                    eval_loss=None if result is None else result.loss,
                )
                records.append(stats)
                reporter.end_epoch(stats)
                metrics = {k: v for k, v in asdict(stats).items() if isinstance(v, float)}
                for callback in hooks:
                    callback.on_epoch_end(epoch, metrics)
                stop = stopper.update(stats.eval_accuracy)
                state.epoch, state.history = epoch, [asdict(r) for r in records]
                if config.checkpoint_dir is not None and is_main_process():
                    save_checkpoint(Path(config.checkpoint_dir) / "last.pt", model, optimizer,
                                    scheduler, state, train_loader)
                if stop:
                    break
            for callback in hooks:
                callback.on_train_end()
    finally:
        modes.restore()
    return History(tuple(records))
