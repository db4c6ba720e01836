"""``prunekit profile``: parameters, non-zeros, MACs, bytes and latency of a model."""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console

from prunekit.cli.model_spec import load_factory_model, load_weights, parse_shape
from prunekit.metrics.latency import benchmark_latency
from prunekit.metrics.profile import profile


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="params, non-zeros, MACs, bytes and latency of a model")
    p.add_argument("--model", required=True, help="package.module:factory, e.g. prunekit.zoo:lenet5")
    p.add_argument("--input-shape", required=True, help="example input shape, e.g. 1,1,32,32")
    p.add_argument("--weights", help="optional .safetensors (or weights-only .pt) state dict")
    p.add_argument("--latency", action="store_true", help="also time the forward pass")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    model = load_factory_model(args.model).eval()
    if args.weights:
        load_weights(model, args.weights)
    example = torch.randn(parse_shape(args.input_shape))
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
