"""``prunekit demo --compare-schedules``: static vs dynamic pruning at equal training budget.

Seed 004's comparison on the MNIST subset at 90 % sparsity. One dense LeNet-5 is trained
first; then every method gets the same number of fine-tuning steps from it, with the same
optimizer recipe, with and without distillation from the dense model:

- one-shot: prune to 90 % at step 0 (global magnitude), fine-tune the rest;
- iterative (Han et al.): three prune → fine-tune cycles, the last at half the budget;
- gradual (Zhu & Gupta): cubic sparsity 0 → 90 % over the first half of the budget;
- RigL (Evci et al.): 90 % at step 0 (the same global cut), then every ΔT each layer drops
  and regrows a cosine-decaying share of its active weights, until 75 % of the budget.

With ``scratch`` the two dynamic methods also train a fresh model for the whole budget of
the static pipeline (dense epochs + fine-tune epochs): pruning *during* training vs after.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from prunekit.data.vision import load_dataset
from prunekit.errors import ConfigError, check_fraction
from prunekit.io.atomic import atomic_write_text
from prunekit.report.table import Column, make_console, print_table
from prunekit.schedules import Iterative, OneShot, PolynomialDecay, RigL, Schedule
from prunekit.sparse.masks import masked_tensors
from prunekit.train.callbacks import MaskOptions, Pruner
from prunekit.train.distill import DistillationLoss
from prunekit.train.finetune import FinetuneConfig, evaluate, finetune
from prunekit.zoo import LeNet5

METHODS = ("one-shot", "iterative", "gradual", "rigl")


@dataclass(frozen=True)
class CompareConfig:
    """The comparison's options; defaults finish in about 2 minutes on 2 cores."""

    dataset: str = "mnist"
    data_dir: str | None = None
    out: str = "prunekit-out/compare-schedules"
    sparsity: float = 0.9
    dense_epochs: int = 15
    epochs: int = 8
    lr: float = 3e-3
    batch_size: int = 64
    limit: int | None = 10_000
    seed: int = 0
    alpha: float = 0.7
    temperature: float = 4.0
    scratch: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        check_fraction("sparsity", self.sparsity)
        check_fraction("alpha", self.alpha, allow_one=True, meaning="")
        if self.dense_epochs < 1 or self.epochs < 1:
            raise ConfigError(f"dense_epochs={self.dense_epochs}, epochs={self.epochs}: both "
                              f"must be >= 1")


COLUMNS = (
    Column("method", "method", justify="left"),
    Column("start", "start", justify="left"),
    Column("distill", "distill", justify="left"),
    Column("epochs", "epochs"),
    Column("sparsity", "sparsity", "{:.1%}"),
    Column("accuracy", "acc", "{:.2%}"),
    Column("delta", "Δ pts vs dense", "{:+.2f}"),
    Column("seconds", "train s", "{:.1f}"),
)


def schedule_for(method: str, sparsity: float, steps: int, steps_per_epoch: int) -> Schedule:
    """The schedule of ``method`` over a budget of ``steps`` optimizer steps."""
    if method == "one-shot":
        return OneShot(sparsity, step=0)
    if method == "iterative":
        return Iterative(sparsity, cycles=3, cycle_steps=max(1, steps // 4))
    if method == "gradual":
        return PolynomialDecay(0.0, sparsity, begin_step=0, end_step=max(1, steps // 2),
                               power=3.0, frequency=max(1, steps_per_epoch // 4))
    if method == "rigl":
        return RigL(sparsity, end_step=max(2, (3 * steps) // 4),
                    update_every=max(1, steps // 16), alpha=0.3)
    raise ConfigError(f"method={method!r} is not one of {', '.join(METHODS)}")


def _sparsity(model: nn.Module) -> float:
    masks = masked_tensors(model).values()
    total = sum(m.numel() for m in masks)
    return 1.0 - sum(int(m.sum()) for m in masks) / max(1, total)


def run_compare(cfg: CompareConfig, console: Console | None = None) -> dict[str, Any]:
    """Run every method (± distillation) and return the rows written to ``results.json``."""
    console = console or make_console()
    started = time.perf_counter()
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.seed, limit=cfg.limit)

    def loader() -> DataLoader[Any]:
        gen = torch.Generator().manual_seed(cfg.seed)
        return DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True, generator=gen)

    test_loader = DataLoader(data.test, batch_size=256)
    steps_per_epoch = len(loader())
    train_cfg = FinetuneConfig(optimizer="adamw", lr=cfg.lr, weight_decay=0.05, cosine=True,
                               seed=cfg.seed, num_threads=1)
    torch.manual_seed(cfg.seed)
    dense = LeNet5(num_classes=data.num_classes)
    console.print(f"[bold]compare schedules[/]: dense LeNet-5 on {data.source}, "
                  f"{cfg.dense_epochs} epochs …")
    tic = time.perf_counter()
    finetune(dense, loader(), cfg.dense_epochs, config=train_cfg, progress=cfg.progress)
    dense_seconds = time.perf_counter() - tic
    dense_acc = evaluate(dense, test_loader).accuracy
    rows: list[dict[str, Any]] = [{
        "method": "dense", "start": "scratch", "distill": "-", "epochs": cfg.dense_epochs,
        "sparsity": 0.0, "accuracy": dense_acc, "delta": 0.0, "seconds": dense_seconds}]

    runs = [(m, "dense", d) for m in METHODS for d in (False, True)]
    if cfg.scratch:
        runs += [(m, "scratch", False) for m in ("gradual", "rigl")]
    for method, start, distill in runs:
        epochs = cfg.epochs if start == "dense" else cfg.dense_epochs + cfg.epochs
        if start == "dense":
            model = copy.deepcopy(dense)
        else:
            torch.manual_seed(cfg.seed)
            model = LeNet5(num_classes=data.num_classes)
        steps = epochs * steps_per_epoch
        pruner = Pruner(schedule_for(method, cfg.sparsity, steps, steps_per_epoch),
                        masks=MaskOptions(scope="global"))
        loss_fn = DistillationLoss(copy.deepcopy(dense), alpha=cfg.alpha,
                                   temperature=cfg.temperature) if distill else None
        tic = time.perf_counter()
        finetune(model, loader(), epochs, config=train_cfg, loss_fn=loss_fn,
                 callbacks=[pruner], progress=cfg.progress)
        seconds = time.perf_counter() - tic
        acc = evaluate(model, test_loader).accuracy
        row = {"method": method, "start": start, "distill": "yes" if distill else "no",
               "epochs": epochs, "sparsity": _sparsity(model), "accuracy": acc,
               "delta": 100 * (acc - dense_acc), "seconds": seconds}
        console.print(f"{method:<9} from {start:<7} distill={row['distill']:<3} "
                      f"acc {acc:.2%} sparsity {row['sparsity']:.1%} ({seconds:.1f} s)")
        rows.append(row)

    total = time.perf_counter() - started
    print_table(
        f"LeNet-5 on {data.name} at {cfg.sparsity:.0%} sparsity: {cfg.epochs} fine-tuning "
        f"epochs each from the dense model ({steps_per_epoch} steps/epoch, AdamW lr {cfg.lr:g} "
        f"cosine, 1 thread); KD α={cfg.alpha:g}, T={cfg.temperature:g}",
        COLUMNS, rows, console,
    )
    results = {"dataset": data.name, "rows": rows, "seconds": total,
               "torch": torch.__version__, "config": asdict(cfg)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare_schedules.json", json.dumps(results, indent=2))
    console.print(f"results written to {out / 'compare_schedules.json'} ({total:.0f} s in all)")
    return results
