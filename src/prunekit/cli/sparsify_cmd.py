"""``prunekit sparsify``: mask weights of a model by magnitude / N:M and save the result."""

from __future__ import annotations

import argparse

import torch
from rich.console import Console

from prunekit.cli.calibration import add_calibration_arguments, calibration_from_args
from prunekit.cli.model_spec import add_model_arguments, model_from_args
from prunekit.io.checkpoint import save
from prunekit.metrics.profile import profile
from prunekit.report.table import SIZE_COLUMNS, Column, print_table, profile_row
from prunekit.sparse.sparsify import sparsify

_COLUMNS = (Column("name", "", justify="left"), *SIZE_COLUMNS)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sparsify", help="unstructured / N:M weight pruning with lasting masks")
    add_model_arguments(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--sparsity", type=float, help="fraction of weights to zero, in [0, 1)")
    how.add_argument("--threshold", type=float, help="prune weights whose score is <= this τ")
    p.add_argument("--criterion", "--importance", dest="criterion", default="l1",
                   help="l1 | l2 | random | normalized | lamp; with --dataset: taylor | "
                        "fisher | snip | grad | wlg | activation")
    p.add_argument("--pattern", default="unstructured",
                   help="unstructured | kernel | block | N:M such as 2:4")
    p.add_argument("--scope", default="global", choices=("global", "layer"))
    p.add_argument("--seed", type=int, default=0)
    add_calibration_arguments(p)
    p.add_argument("--out", required=True, help="directory for the sparsified model")
    p.set_defaults(func=_run)


def _row(name: str, model: torch.nn.Module, example: torch.Tensor) -> dict[str, object]:
    return {"name": name, **profile_row(profile(model, example))}


def _run(args: argparse.Namespace) -> int:
    model, example = model_from_args(args)
    data = calibration_from_args(args, args.criterion)
    before = _row("before", model, example)
    result = sparsify(model, sparsity=args.sparsity, threshold=args.threshold,
                      criterion=args.criterion, pattern=args.pattern, scope=args.scope,
                      seed=args.seed, data=data)
    print_table(f"sparsify: {result.global_sparsity:.1%} of prunable weights zeroed",
                _COLUMNS, [before, _row("after", model, example)])
    save(model, args.out)
    Console().print(f"saved to {args.out} (load with prunekit.load(dir, base_model))")
    return 0
