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
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from prunekit._inputs import model_device, move_inputs
from prunekit.errors import ConfigError, DataError, check_choice

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


@dataclass(frozen=True)
class EvalResult:
    """Top-1 ``accuracy`` in [0, 1] and the example-weighted mean ``loss`` over a loader."""

    accuracy: float
    loss: float
    num_examples: int


@dataclass(frozen=True)
class EpochStats:
    """One epoch of :func:`finetune`: ``lr`` at its start, wall-clock seconds of training
    and of evaluation, and the eval metrics when an eval loader was given."""

    epoch: int
    train_loss: float
    lr: float
    seconds: float
    eval_seconds: float = 0.0
    eval_accuracy: float | None = None
    eval_loss: float | None = None


@dataclass(frozen=True)
class History:
    """Per-epoch record of a :func:`finetune` run (empty for ``epochs=0``)."""

    epochs: tuple[EpochStats, ...] = ()

    @property
    def train_loss(self) -> list[float]:
        return [e.train_loss for e in self.epochs]

    @property
    def eval_accuracy(self) -> list[float]:
        return [e.eval_accuracy for e in self.epochs if e.eval_accuracy is not None]

    @property
    def eval_loss(self) -> list[float]:
        return [e.eval_loss for e in self.epochs if e.eval_loss is not None]

    @property
    def lr(self) -> list[float]:
        return [e.lr for e in self.epochs]

    @property
    def seconds(self) -> list[float]:
        return [e.seconds for e in self.epochs]

    @property
    def best_eval_accuracy(self) -> float | None:
        return max(self.eval_accuracy, default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"epochs": [{...}, ...]}``."""
        return {"epochs": [asdict(e) for e in self.epochs]}


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


def _make_optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("model has no parameters with requires_grad=True; nothing to train")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


class _RunningLoss:
    """Example-weighted mean loss, summed on the device so each step costs no host sync."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.examples = 0

    def add(self, loss: torch.Tensor, n: int) -> None:
        self.total += loss.detach() * n
        self.examples += n

    def value(self) -> float:
        return float(self.total) / self.examples if self.examples else math.nan


class _Reporter:
    """A transient rich progress bar on a terminal; plain per-epoch lines otherwise."""

    def __init__(self, enabled: bool, epochs: int, steps: int | None, log_every: int) -> None:
        self.enabled, self.epochs, self.steps, self.log_every = enabled, epochs, steps, log_every
        self.console = Console(highlight=False)
        self.bar: Progress | None = None
        if enabled and self.console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("loss {task.fields[loss]}"),
                console=self.console,
                transient=True,
            )
        self._task: Any = None

    def __enter__(self) -> _Reporter:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start_epoch(self, epoch: int) -> None:
        if self.bar is None:
            return
        if self._task is not None:
            self.bar.remove_task(self._task)
        self._task = self.bar.add_task(f"epoch {epoch}/{self.epochs}", total=self.steps, loss="…")

    def step(self, epoch: int, step: int, running: _RunningLoss) -> None:
        log = self.enabled and self.log_every > 0 and step % self.log_every == 0
        if self.bar is not None:
            if log or step % 20 == 0:
                self.bar.update(self._task, advance=1, loss=f"{running.value():.4f}")
            else:
                self.bar.update(self._task, advance=1)
        if log:
            total = "?" if self.steps is None else self.steps
            self.console.print(
                f"epoch {epoch} step {step}/{total} loss {running.value():.4f}", soft_wrap=True
            )

    def end_epoch(self, stats: EpochStats) -> None:
        if not self.enabled:
            return
        line = f"epoch {stats.epoch}/{self.epochs}  train loss {stats.train_loss:.4f}"
        if stats.eval_accuracy is not None:
            line += f"  eval acc {stats.eval_accuracy:.2%}  eval loss {stats.eval_loss:.4f}"
        line += f"  lr {stats.lr:.3g}  {stats.seconds:.1f} s"
        self.console.print(line, soft_wrap=True)


def _train_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: LossFn,
    config: FinetuneConfig,
    device: torch.device,
    report: Callable[[int, _RunningLoss], None],
) -> tuple[float, int]:
    """One pass over ``loader``; returns (example-weighted mean loss, number of batches)."""
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    running = _RunningLoss(device)
    steps = 0
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
        steps += 1
        report(steps, running)
    return running.value(), steps


def _check_finetune_args(
    model: object,
    epochs: object,
    config: object,
    train_loader: object,
    eval_loader: object,
    optimizer: object,
    loss_fn: object,
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
) -> History:
    """Train ``model`` in place for ``epochs`` passes over ``train_loader``; return its History.

    The optimizer is built from ``config`` unless one is given (the cosine schedule, if on,
    then drives that optimizer's learning rate). ``loss_fn(model, batch)`` defaults to
    cross-entropy on ``(inputs, targets)``. With ``eval_loader`` the model is evaluated
    after every epoch. ``config.device`` moves the model there (in place). The model is in
    train mode while training; every submodule's train/eval mode is restored at the end.
    """
    config = _check_finetune_args(
        model, epochs, config, train_loader, eval_loader, optimizer, loss_fn
    )
    if epochs == 0:
        return History()

    if config.device is not None:
        model.to(config.device)
    device = model_device(model)
    optimizer = optimizer or _make_optimizer(model, config)
    steps = len(train_loader) if isinstance(train_loader, Sized) else None
    scheduler = None
    if config.cosine:
        # per step when the loader's length is known, else per epoch
        horizon = epochs * steps if steps else epochs
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=horizon)
    eval_loss_fn = loss_fn  # None: evaluate's own cross-entropy, no second forward pass
    loss_fn = loss_fn or cross_entropy_loss
    rng_devices = [device] if device.type == "cuda" else []
    modes = _TrainingModes(model)
    records: list[EpochStats] = []
    try:
        with (
            torch.random.fork_rng(devices=rng_devices, enabled=config.seed is not None),
            _torch_threads(config.num_threads),
            _Reporter(progress, epochs, steps, config.log_every) as reporter,
        ):
            if config.seed is not None:
                torch.manual_seed(config.seed)
            for epoch in range(1, epochs + 1):
                lr = float(optimizer.param_groups[0]["lr"])
                reporter.start_epoch(epoch)
                started = time.perf_counter()
                train_loss, done = _train_epoch(
                    model,
                    train_loader,
                    optimizer,
                    scheduler if steps else None,
                    loss_fn,
                    config,
                    device,
                    partial(reporter.step, epoch),
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
    finally:
        modes.restore()
    return History(tuple(records))
