"""Two versions of prunekit in one process: ``prune`` time of a base commit vs the working tree.

On a shared machine, runs of one version after the other differ by more than most speed
changes (±10-15 % between runs on these 2-core VMs). This script loads both versions side by
side: each tree's ``src/prunekit`` is copied to a temporary directory under a package name of
its own (``prunekit_ab_base``, ``prunekit_ab_head``; every ``prunekit`` word in its sources
renamed), and the two ``prune(model, x, ratio=0.5, importance="l2", inplace=True)`` calls
alternate on fresh copies of each zoo model, with the same ``ignore`` as
benchmarks/structured.py. It reports the median thread CPU time (``time.thread_time``, one
torch thread: time the process was descheduled does not count) and the median wall time of
each, and their ratios; the summary line gives the median ratio over the models.
``--trace`` times the trace alone (``graph.trace.trace``) and adds the model's own no-grad
forward, so that the last column is the ratio of the tracer's overhead (trace − forward).

Command:

    PYTHONPATH=src .venv/bin/python benchmarks/structured_ab.py --base a1ddfd5 [--repeats 40]
        [--models resnet_basic,vgg_bn] [--head REV]   # --head: a commit instead of the tree
        [--trace]                                     # the trace alone, and its overhead
"""

from __future__ import annotations

import argparse
import copy
import importlib
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.structured.zoo
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.structured.zoo import ZOO  # noqa: E402

from prunekit._inputs import run_model  # noqa: E402
from structured import output_layers  # noqa: E402

_WORD = re.compile(r"\bprunekit\b")


def _export(rev: str | None, name: str, into: Path) -> None:
    """``src/prunekit`` of commit ``rev`` (None: the working tree) as package ``name``."""
    target = into / name
    if rev is None:
        shutil.copytree(ROOT / "src" / "prunekit", target,
                        ignore=shutil.ignore_patterns("__pycache__"))
    else:
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src/prunekit"],
                              check=True, capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(blob)) as tar:
            tar.extractall(into / "_tar", filter="data")
        shutil.move(into / "_tar" / "src" / "prunekit", target)
    for path in target.rglob("*.py"):
        path.write_text(_WORD.sub(name, path.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="commit to compare against")
    parser.add_argument("--head", default=None, help="commit (default: the working tree)")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--models", default="resnet_basic,vgg_bn,mobilenet_v2,vit,"
                                              "dict_text_image,split_glu,lenet5,control_flow")
    parser.add_argument("--trace", action="store_true", help="time the trace alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        _export(args.base, "prunekit_ab_base", Path(tmp))
        _export(args.head, "prunekit_ab_head", Path(tmp))
        sys.path.insert(0, tmp)
        sides = {side: importlib.import_module(f"prunekit_ab_{side}") for side in ("base", "head")}
        print(f"base {args.base}, head {args.head or 'working tree'}; median of "
              f"{args.repeats} alternated {'traces' if args.trace else 'prunes'}, ms")
        print(f"{'model':<18}{'base cpu':>9}{'head cpu':>9}{'ratio':>7}"
              f"{'base wall':>10}{'head wall':>10}{'ratio':>7}"
              + (f"{'forward':>9}{'overhead ratio':>16}" if args.trace else ""))
        ratios = []
        for name in [n for n in args.models.split(",") if n]:
            entry = next(e for e in ZOO if e.name == name)
            base_model, inputs = entry.build().eval(), entry.example_inputs()
            cpu: dict[str, list[float]] = {"base": [], "head": [], "forward": []}
            wall: dict[str, list[float]] = {"base": [], "head": [], "forward": []}
            call = _trace if args.trace else _prune
            for i in range(args.repeats + 1):
                order = ("base", "head") if i % 2 else ("head", "base")
                if args.trace:
                    order += ("forward",)
                for side in order:
                    model = copy.deepcopy(base_model)
                    ignore = output_layers(model, inputs)
                    start_cpu, start_wall = time.thread_time(), time.perf_counter()
                    if side == "forward":
                        with torch.no_grad():
                            run_model(model, inputs)
                    else:
                        call(sides[side], model, inputs, ignore)
                    if i:  # the first round warms both up
                        cpu[side].append(time.thread_time() - start_cpu)
                        wall[side].append(time.perf_counter() - start_wall)
            c = {k: statistics.median(v) * 1e3 for k, v in cpu.items() if v}
            w = {k: statistics.median(v) * 1e3 for k, v in wall.items() if v}
            ratios.append(c["head"] / c["base"])
            extra = ""
            if args.trace:
                over = (c["head"] - c["forward"]) / (c["base"] - c["forward"])
                extra = f"{c['forward']:>9.2f}{over:>16.2f}"
            print(f"{name:<18}{c['base']:>9.2f}{c['head']:>9.2f}{c['head'] / c['base']:>7.2f}"
                  f"{w['base']:>10.2f}{w['head']:>10.2f}{w['head'] / w['base']:>7.2f}{extra}",
                  flush=True)
        print(f"median cpu-time ratio head / base: {statistics.median(ratios):.2f}")


def _prune(package: ModuleType, model: torch.nn.Module, inputs: Any, ignore: list[Any]) -> Any:
    return package.prune(model, inputs, ratio=0.5, importance="l2", ignore=ignore,
                         inplace=True)


def _trace(package: ModuleType, model: torch.nn.Module, inputs: Any, ignore: list[Any]) -> Any:
    tracing = importlib.import_module(f"{package.__name__}.graph.trace")
    adapters = importlib.import_module(f"{package.__name__}.structured.adapters")
    return tracing.trace(model, inputs, adapters.find_adapter)


if __name__ == "__main__":
    main()
