"""What a run reports: ``finetune``'s History and terminal progress, and the optional
TensorBoard and Weights & Biases loggers (callbacks; off by default, one flag each in
``FinetuneConfig``).

Both loggers record the training loss and learning rate per step, the eval metrics per
epoch, the sparsity of every masked tensor (``sparsity/<tensor>`` and ``sparsity/global``)
and, for TensorBoard, a histogram of every effective weight. Only rank 0 writes. The
packages are imported when a run starts, so prunekit imports without them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from prunekit.errors import require
from prunekit.sparse.masks import masked_tensors
from prunekit.train.callbacks import Callback
from prunekit.train.distributed import is_main_process, unwrap


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


class RunningLoss:
    """Example-weighted mean loss, summed on the device so each step costs no host sync."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.examples = 0

    def add(self, loss: torch.Tensor, n: int) -> None:
        self.total += loss.detach() * n
        self.examples += n

    def value(self) -> float:
        return float(self.total) / self.examples if self.examples else math.nan


def sparsity_by_tensor(model: nn.Module) -> dict[str, float]:
    """Masked-out fraction per masked tensor, plus ``"global"`` over all of them."""
    masks = masked_tensors(unwrap(model))
    out = {name: 1.0 - float(m.float().mean()) for name, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    if total:
        out["global"] = 1.0 - sum(int(m.sum()) for m in masks.values()) / total
    return out


class _MetricLogger(Callback):
    """Shared bookkeeping: the model, the optimizer (for the lr), the current step."""

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        self.enabled = False

    def on_train_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = unwrap(model), optimizer
        self.enabled = is_main_process()
        if self.enabled:
            self._open()

    def on_step(self, step: int, loss: float | None = None) -> None:
        self.step = step
        if not self.enabled or self.optimizer is None:
            return
        values = {"train/lr": float(self.optimizer.param_groups[0]["lr"])}
        if loss is not None:
            values["train/loss"] = float(loss)
        self._scalars(values, step)

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float] | None = None) -> None:
        if not self.enabled or self.model is None:
            return
        values = {f"epoch/{k}": float(v) for k, v in (metrics or {}).items()}
        values.update({f"sparsity/{k}": v for k, v in sparsity_by_tensor(self.model).items()})
        values["epoch/epoch"] = float(epoch)
        self._scalars(values, self.step)
        self._weights(self.model, self.step)

    def _open(self) -> None:
        raise NotImplementedError

    def _scalars(self, values: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def _weights(self, model: nn.Module, step: int) -> None:
        """Weight histograms (TensorBoard only)."""


class TensorBoardLogger(_MetricLogger):
    """Write TensorBoard event files under ``log_dir`` (``pip install 'prunekit[tensorboard]'``)."""

    def __init__(self, log_dir: str | os.PathLike[str], *, histograms: bool = True) -> None:
        super().__init__()
        self.log_dir, self.histograms = str(log_dir), histograms
        self.writer: Any = None

    def _open(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            require("tensorboard", "tensorboard")
        self.writer = SummaryWriter(log_dir=self.log_dir)

    def _scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def _weights(self, model: nn.Module, step: int) -> None:
        if not self.histograms:
            return
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.numel():
                self.writer.add_histogram(f"weights/{name}", weight.detach().cpu(), step)

    def on_train_end(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLogger(_MetricLogger):
    """Log to Weights & Biases, offline by default (``pip install 'prunekit[wandb]'``).

    ``mode="offline"`` needs no network or account: runs land in ``<dir>/wandb`` and can be
    uploaded later with ``wandb sync``.
    """

    def __init__(self, project: str, *, dir: str | os.PathLike[str] | None = None,
                 mode: Literal["offline", "online", "disabled"] = "offline",
                 config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.project, self.dir, self.mode = project, dir, mode
        self.config = dict(config or {})
        self.run: Any = None

    def _open(self) -> None:
        try:
            import wandb
        except ImportError:
            require("wandb", "wandb")
        self.run = wandb.init(project=self.project, dir=None if self.dir is None else str(
            self.dir), mode=self.mode, config=self.config)

    def _scalars(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def on_train_end(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def loggers(
    tensorboard: str | None, wandb: str | None, config: Mapping[str, Any] | None = None
) -> list[Callback]:
    """The loggers ``FinetuneConfig(tensorboard=<log dir>, wandb=<project>)`` turns on."""
    out: list[Callback] = []
    if tensorboard is not None:
        out.append(TensorBoardLogger(tensorboard))
    if wandb is not None:
        out.append(WandbLogger(wandb, dir=os.environ.get("WANDB_DIR"), config=config))
    return out


class ProgressReporter:
    """A transient rich progress bar on a terminal; plain per-epoch lines otherwise."""

    def __init__(self, enabled: bool, epochs: int, steps: int | None, log_every: int,
                 console: Console | None = None) -> None:
        self.enabled, self.epochs, self.steps, self.log_every = enabled, epochs, steps, log_every
        self.console = console or Console(highlight=False)
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

    def __enter__(self) -> ProgressReporter:
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

    def step(self, epoch: int, step: int, running_loss: Callable[[], float]) -> None:
        """``running_loss()`` is only called when shown (it waits for the device)."""
        log = self.enabled and self.log_every > 0 and step % self.log_every == 0
        if self.bar is not None:
            if log or step % 20 == 0:
                self.bar.update(self._task, advance=1, loss=f"{running_loss():.4f}")
            else:
                self.bar.update(self._task, advance=1)
        if log:
            total = "?" if self.steps is None else self.steps
            self.console.print(
                f"epoch {epoch} step {step}/{total} loss {running_loss():.4f}", soft_wrap=True
            )

    def end_epoch(self, stats: EpochStats) -> None:
        if not self.enabled:
            return
        line = f"epoch {stats.epoch}/{self.epochs}  train loss {stats.train_loss:.4f}"
        if stats.eval_accuracy is not None:
            line += f"  eval acc {stats.eval_accuracy:.2%}  eval loss {stats.eval_loss:.4f}"
        line += f"  lr {stats.lr:.3g}  {stats.seconds:.1f} s"
        self.console.print(line, soft_wrap=True)
