"""Golden snapshot of structured pruning: proves a refactor or speed change left results alone.

For every zoo model (tests/structured/zoo.py) it records the dependency groups (members and
unit ids), the group scores and the coverage report of ``analyze``, and for each of the
configurations in ``CONFIGS`` the plan (JSON), the pruned parameter count and the pruned
model's outputs; ``compare`` reports which entries differ (tensors compared exactly, NaN
equal to NaN). Not a test: a check to run before and after a change that must not change
results.

Command:

    git stash; .venv/bin/python benchmarks/structured_golden.py dump /tmp/base.pt; git stash pop
    .venv/bin/python benchmarks/structured_golden.py dump /tmp/head.pt
    .venv/bin/python benchmarks/structured_golden.py compare /tmp/base.pt /tmp/head.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.structured.zoo

from tests.structured.zoo import ZOO, output_tensors  # noqa: E402

from prunekit._inputs import run_model  # noqa: E402
from prunekit.structured.pruning import analyze, prune  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "ratio0.3": {"ratio": 0.3},
    "ratio0.5": {"ratio": 0.5},
    "l1-max": {"ratio": 0.5, "importance": "l1", "aggregation": "max"},
    "global": {"ratio": 0.4, "global_ranking": True},
    "round_to8": {"ratio": 0.5, "round_to": 8},
    "fpgm": {"ratio": 0.5, "importance": "fpgm"},
    "bn_scale": {"ratio": 0.5, "importance": "bn_scale"},
    "macs0.5": {"target": {"macs": 0.5}},
    "min-max-standard": {"ratio": 0.6, "min_keep": 0.3, "max_keep": 0.9,
                         "normalization": "standard", "global_ranking": True},
    "random": {"ratio": 0.5, "importance": "random", "seed": 3},
}


def _error(exc: Exception) -> str:
    return f"error {type(exc).__name__}: {str(exc)[:300]}"


def snapshot() -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for entry in ZOO:
        base = entry.build().eval()
        inputs = entry.example_inputs()
        try:
            found = analyze(copy.deepcopy(base), inputs)
            out[entry.name, "groups"] = [
                (sorted((m.name, m.kind, str(m.dim)) for m in g.members), g.units.tolist())
                for g in found.graph.groups]
            out[entry.name, "scores"] = [s.clone() for s in found.scores]
            out[entry.name, "coverage"] = repr(found.coverage.entries)
        except Exception as exc:  # an error is a result to compare too
            out[entry.name, "groups"] = _error(exc)
        for name, kwargs in CONFIGS.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = prune(copy.deepcopy(base), inputs, **kwargs)
                with torch.no_grad():
                    outputs = [t.clone() for t in output_tensors(run_model(result.model, inputs))]
                out[entry.name, name] = (json.dumps(result.plan, sort_keys=True, default=str),
                                         sum(p.numel() for p in result.model.parameters()),
                                         outputs)
            except Exception as exc:
                out[entry.name, name] = _error(exc)
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0)))
    if isinstance(a, (list, tuple)):
        return (isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b, strict=True)))
    return bool(a == b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("dump").add_argument("out")
    cmp = sub.add_parser("compare")
    cmp.add_argument("base")
    cmp.add_argument("head")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "dump":
        snap = snapshot()
        torch.save(snap, args.out)
        errors = sum(isinstance(v, str) and v.startswith("error") for v in snap.values())
        print(f"{len(snap)} entries ({errors} errors) written to {args.out}")
        return
    # our own files: they hold tuples and lists, which weights_only cannot load
    base = torch.load(args.base, weights_only=False)
    head = torch.load(args.head, weights_only=False)
    differ = [key for key in base if key not in head or not _same(base[key], head[key])]
    print(f"{len(base) - len(differ)}/{len(base)} identical")
    for key in differ:
        print("differs:", *key)
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
