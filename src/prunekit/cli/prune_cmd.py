"""``prunekit prune``: structured pruning — physically remove channels, save plan + weights."""

from __future__ import annotations

import argparse
import contextlib

from rich.console import Console

from prunekit.cli.calibration import add_calibration_arguments, calibration_from_args
from prunekit.cli.model_spec import add_model_arguments, model_from_args
from prunekit.errors import ConfigError
from prunekit.importance.group_data import calibrated
from prunekit.io.checkpoint import save
from prunekit.report.table import Column, make_console, print_table
from prunekit.structured.pruning import prune

_COLUMNS = (
    Column("name", "", justify="left"),
    Column("params", "params", "{:,}"),
    Column("macs", "MACs", "{:,}"),
    Column("bytes", "bytes fp32", "{:,}"),
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="structured pruning: remove channels/neurons/heads, save a smaller dense model",
        description="Remove whole channels through the dependency graph. --ratio is the "
                    "fraction of channels removed from every group; --target-macs / "
                    "--target-params search the ratio that keeps that fraction instead.",
    )
    add_model_arguments(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="fraction of channels to remove per group")
    how.add_argument("--target-macs", type=float, help="fraction of MACs to keep, e.g. 0.5")
    how.add_argument("--target-params", type=float, help="fraction of parameters to keep")
    p.add_argument("--importance", default="l2",
                   help="l1 | l2 | bn_scale | fpgm | random, or data-aware (with --dataset): "
                        "taylor | fisher | snip | grad | wlg | activation")
    p.add_argument("--global-ranking", action=argparse.BooleanOptionalAction, default=None,
                   help="rank channels of all groups together (normalised scores); the "
                        "default with --target-macs/--target-params, where "
                        "--no-global-ranking searches one uniform ratio instead")
    p.add_argument("--round-to", type=int, help="keep widths at multiples of N")
    p.add_argument("--no-strict", action="store_true",
                   help="treat unknown ops as unprunable with a warning instead of failing")
    p.add_argument("--seed", type=int, default=0)
    add_calibration_arguments(p)
    p.add_argument("--out", required=True, help="directory for plan.json + weights")
    p.set_defaults(func=_run)


def _target(args: argparse.Namespace) -> dict[str, float] | None:
    if args.target_macs is not None:
        return {"macs": args.target_macs}
    if args.target_params is not None:
        return {"params": args.target_params}
    return None


def _run(args: argparse.Namespace) -> int:
    if args.round_to is not None and args.round_to < 1:
        raise ConfigError(f"--round-to {args.round_to}: must be a positive integer")
    model, example = model_from_args(args)
    data = calibration_from_args(args, args.importance, flag="--importance")
    # data-aware criteria read their statistic from .grad, held there for the block
    scoring = (calibrated(model, args.importance, data) if data is not None
               else contextlib.nullcontext())
    with scoring:
        result = prune(model, example, ratio=args.ratio, target=_target(args),
                       importance=args.importance, global_ranking=args.global_ranking,
                       round_to=args.round_to, strict=not args.no_strict, seed=args.seed)
    rows = [
        {"name": name, "params": prof.total_params, "macs": prof.macs, "bytes": prof.bytes_fp32}
        for name, prof in (("before", result.before), ("after", result.after))
    ]
    print_table(f"prune: {result.groups} groups, params kept {result.params_kept:.1%}, "
                f"MACs kept {result.macs_kept:.1%}", _COLUMNS, rows)
    console: Console = make_console()
    console.print(str(result.coverage))
    save(result, args.out)
    console.print(f"saved to {args.out} (reload with prunekit.load(dir, base_model))")
    return 0
