"""Data-aware vs data-free importance: one-shot pruning accuracy without fine-tuning.

Run from the repository root (about 5 minutes on one thread of a shared 2-core box):

    .venv/bin/python benchmarks/importance.py --out benchmarks/importance.md
    .venv/bin/python benchmarks/importance.py --quick      # fewer epochs, a smoke run
    .venv/bin/python benchmarks/importance.py --dataset fashion-mnist --limit 5000 \
        --skip snip                                        # the same on Fashion-MNIST

1. LeNet-5 trained on the MNIST subset (4,000 train / 1,000 test; AdamW lr 3e-3, wd 0.05,
   cosine, 15 epochs, batch 64, one thread). Every criterion prunes a fresh copy, one
   shot, no fine-tuning: unstructured 90 % and 95 % (``sparsify``, global ranking), and
   structured 50 % of the channels of every group (``prunekit.structured.prune``), alone
   and followed by the least-squares refit of ``prunekit.train.recover.reconstruct``.
   Data-aware criteria use 16 calibration batches of 64 training images (cross-entropy).
2. A depthwise-separable CNN with BatchNorm trained the same way (10 epochs), pruned by
   20 % of channels: top-1 agreement with the unpruned model and accuracy, one shot,
   + BN re-estimation, + least-squares refit, + both (refit, then BN).
3. SNIP at initialisation: a 90 % SNIP mask (one batch of 256 at init) trained like the
   dense network, vs the dense network and a random 90 % mask.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from prunekit.data.vision import load_dataset
from prunekit.importance import calibrated
from prunekit.importance.data import CalibrationData
from prunekit.sparse.sparsify import sparsify
from prunekit.structured.pruning import prune
from prunekit.train.finetune import FinetuneConfig, evaluate, finetune
from prunekit.train.recover import recalibrate_batchnorm, reconstruct
from prunekit.zoo import LeNet5

DATA_FREE = ("random", "l1", "lamp")
DATA_AWARE = ("grad", "taylor", "wlg", "snip", "fisher", "activation")
#: row label → (criterion, accumulate); "/sample" rows use per-sample gradients
LENET_ROWS: dict[str, tuple[str, str]] = {
    **{n: (n, "batch") for n in (*DATA_FREE, *DATA_AWARE)},
    "taylor/sample": ("taylor", "sample"), "fisher/sample": ("fisher", "sample")}
STRUCTURED_FREE = ("random", "l1", "l2", "fpgm")
STRUCTURED_DATA = ("grad", "taylor", "wlg", "snip", "fisher", "activation")
CALIB_BATCHES = 16


def ds_cnn() -> nn.Module:
    """A small MobileNet-style CNN: stem conv, four depthwise-separable blocks, BN everywhere."""
    def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
                nn.BatchNorm2d(c_in), nn.ReLU(),
                nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         *block(16, 32, 1), *block(32, 64, 2), *block(64, 64, 1),
                         *block(64, 128, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(128, 10))


def _train(model: nn.Module, train: DataLoader, epochs: int) -> nn.Module:
    config = FinetuneConfig(lr=3e-3, weight_decay=0.05, optimizer="adamw", cosine=True,
                            num_threads=1, seed=0)
    finetune(model, train, epochs, config=config, progress=False)
    return model.eval()


@torch.no_grad()
def _agreement(model: nn.Module, reference: nn.Module, loader: DataLoader) -> float:
    model.eval()
    reference.eval()
    same = total = 0
    for x, _ in loader:
        same += int((model(x).argmax(1) == reference(x).argmax(1)).sum())
        total += x.shape[0]
    return same / total


def _acc(model: nn.Module, loader: DataLoader) -> float:
    return evaluate(model, loader).accuracy


def _calib(train: DataLoader, accumulate: str = "batch") -> CalibrationData:
    return CalibrationData(train, batches=CALIB_BATCHES, accumulate=accumulate)  # type: ignore[arg-type]


def _structured(model: nn.Module, example: torch.Tensor, ratio: float, criterion: str,
                train: DataLoader, accumulate: str = "batch") -> Any:
    if criterion in STRUCTURED_DATA:
        with calibrated(model, criterion, _calib(train, accumulate)):
            result = prune(model, example, ratio=ratio, importance=criterion)
    else:
        result = prune(model, example, ratio=ratio, importance=criterion)
    result.model.eval()
    return result


def lenet_tables(train: DataLoader, test: DataLoader, epochs: int) -> list[str]:
    torch.manual_seed(0)
    dense = _train(LeNet5(), train, epochs)
    base = _acc(dense, test)
    lines = [f"LeNet-5 dense: top-1 {base:.2%} on {len(test.dataset)} test images "  # type: ignore[arg-type]
             f"({epochs} epochs)", "",
             "| criterion | unstr. 90 % global | unstr. 95 % global | unstr. 95 % per layer | "
             "structured 50 % | structured 50 % + LS refit | s per unstr. prune |",
             "|---|---|---|---|---|---|---|"]
    example = next(iter(test))[0][:2]
    for label, (name, accumulate) in LENET_ROWS.items():
        cells, start = [], time.perf_counter()
        for sparsity, scope in ((0.9, "global"), (0.95, "global"), (0.95, "layer")):
            model = copy.deepcopy(dense)
            data = _calib(train, accumulate) if name in DATA_AWARE else None
            sparsify(model, sparsity, criterion=name, data=data, seed=0, scope=scope)  # type: ignore[arg-type]
            cells.append(f"{_acc(model, test):.2%}")
        seconds = (time.perf_counter() - start) / 3
        if name == "lamp":
            cells += ["n/a (unstructured only)", ""]
        else:
            result = _structured(dense, example, 0.5, name, train, accumulate)
            cells.append(f"{_acc(result.model, test):.2%}")
            reconstruct(result.model, dense, result.plan, _calib(train))
            cells.append(f"{_acc(result.model, test):.2%}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {seconds:.1f} |")
    for name in ("l2", "fpgm"):
        result = _structured(dense, example, 0.5, name, train)
        one_shot = _acc(result.model, test)
        reconstruct(result.model, dense, result.plan, _calib(train))
        lines.append(f"| {name} | – | – | – | {one_shot:.2%} | {_acc(result.model, test):.2%} "
                     f"| |")
    return lines


def dscnn_table(train: DataLoader, test: DataLoader, epochs: int) -> list[str]:
    torch.manual_seed(0)
    dense = _train(ds_cnn(), train, epochs)
    example = next(iter(test))[0][:2]
    lines = [f"Depthwise-separable CNN with BN: dense top-1 {_acc(dense, test):.2%}; 20 % of "
             f"channels removed, top-1 agreement with the dense model (accuracy)", "",
             "| criterion | params kept | one-shot | + BN re-estimation | + LS refit | "
             "+ LS refit + BN |", "|---|---|---|---|---|---|"]
    steps: list[tuple[str, Callable[[nn.Module, Any], None]]] = [
        ("bn", lambda m, r: recalibrate_batchnorm(m, _calib(train))),
        ("ls", lambda m, r: reconstruct(m, dense, r.plan, _calib(train))),
        ("ls+bn", lambda m, r: (reconstruct(m, dense, r.plan, _calib(train)),
                                recalibrate_batchnorm(m, _calib(train)))),
    ]
    for name in ("random", "l1", "l2", "fpgm", "bn_scale", "taylor", "fisher", "activation"):
        result = _structured(dense, example, 0.2, name, train)
        cells = [f"{result.params_kept:.0%}",
                 f"{_agreement(result.model, dense, test):.1%} ({_acc(result.model, test):.1%})"]
        for _, step in steps:
            model = copy.deepcopy(result.model)
            step(model, result)
            cells.append(f"{_agreement(model, dense, test):.1%} ({_acc(model, test):.1%})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def snip_table(train: DataLoader, test: DataLoader, epochs: int) -> list[str]:
    rows = []
    for label in ("dense", "random 90 %", "SNIP 90 %"):
        torch.manual_seed(0)
        model = LeNet5()
        if label != "dense":
            one_batch = DataLoader(train.dataset, batch_size=256, shuffle=True,
                                   generator=torch.Generator().manual_seed(0))
            crit = "snip" if label.startswith("SNIP") else "random"
            data = CalibrationData(one_batch, batches=1) if crit == "snip" else None
            sparsify(model, 0.9, criterion=crit, data=data)
        _train(model, train, epochs)
        rows.append(f"| {label} | {_acc(model, test):.2%} |")
    return ["Pruning at initialisation (LeNet-5, trained after masking)", "",
            "| mask at init | top-1 after training |", "|---|---|", *rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs instead of 15/10")
    parser.add_argument("--out", help="also write the markdown tables to this file")
    parser.add_argument("--skip", nargs="*", default=[], choices=("lenet", "dscnn", "snip"))
    parser.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    parser.add_argument("--limit", type=int, help="cap on train + test images (stratified)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = load_dataset(args.dataset, limit=args.limit)
    train = DataLoader(split.train, batch_size=64, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    test = DataLoader(split.test, batch_size=500)
    epochs = 3 if args.quick else 15
    sections = []
    if "lenet" not in args.skip:
        sections.append(lenet_tables(train, test, epochs))
    if "dscnn" not in args.skip:
        sections.append(dscnn_table(train, test, 3 if args.quick else 10))
    if "snip" not in args.skip:
        sections.append(snip_table(train, test, epochs))
    text = "\n\n".join("\n".join(s) for s in sections) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
