"""``prunekit profile``: parameters, non-zeros, MACs, bytes and latency of a model."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from prunekit.cli.model_spec import add_model_arguments, model_from_args
from prunekit.metrics.latency import benchmark_latency
from prunekit.metrics.profile import profile


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="params, non-zeros, MACs, bytes and latency of a model")
    add_model_arguments(p)
    p.add_argument("--latency", action="store_true", help="also time the forward pass")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    model, example = model_from_args(args)
    prof = profile(model, example)
    data = prof.to_dict()
    if args.latency:
        data["latency"] = benchmark_latency(model, example).to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    console = Console()
    console.print(prof.table())
    console.print(
        f"params {prof.total_params:,}  non-zeros {prof.nonzero_params:,}  MACs {prof.macs:,}  "
        f"fp32 {prof.bytes_fp32:,} B  compressed {prof.bytes_sparse_fp32:,} B"
    )
    if args.latency:
        console.print(f"latency: median {data['latency']['median_ms']:.3f} ms")
    return 0
