"""Where ``pk.prune`` spends its time, phase by phase, on zoo models (no peer: a profile).

For each model: the median over ``--repeats`` calls of ``prune(model, x, ratio=0.5,
importance="l2", inplace=True)`` on fresh copies (one thread), the model's own no-grad
forward, and the mean time per prune spent in each phase (summed over its calls:
``_member_views`` runs once per group) — the functions ``prune`` calls, timed by wrapping
them in ``prunekit.structured.pruning`` for the run: trace, build_groups, _member_views
(the adapters' weight views), score_groups, allocate, plan_with_indices, _shallow_clone,
apply_plan and the validation forward (_output_shapes). ``trace - forward`` is the
tracer's own overhead. The benchmark-only ``output_layers`` of benchmarks/structured.py
picks the layers to leave alone, as there.

A name that is not a zoo model is built by ``benchmarks/structured_libraries.py`` (its
venv and sets: ``tv_mvit_v1_b``, ``tv_r3d_18``, ``yolov8n``, ...).

Command:

    PYTHONPATH=src .venv/bin/python benchmarks/structured_phases.py [--repeats 30]
        [--models resnet_basic,vgg_bn,mobilenet_v2,vit,dict_text_image,split_glu]
    PYTHONPATH=src .venv-vision/bin/python benchmarks/structured_phases.py --repeats 3 \
        --models tv_mvit_v1_b,tv_r3d_18
"""

from __future__ import annotations

import argparse
import collections
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.structured.zoo
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.structured.zoo import ZOO  # noqa: E402

import prunekit.structured.pruning as pruning  # noqa: E402
from prunekit._inputs import run_model  # noqa: E402
from structured import output_layers  # noqa: E402

PHASES = ("trace", "build_groups", "_member_views", "score_groups", "allocate",
          "plan_with_indices", "_shallow_clone", "apply_plan", "_output_shapes")


def _timed(spent: dict[str, list[float]], name: str,
           func: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            spent[name].append(time.perf_counter() - start)
    return wrapper


def _build(name: str) -> tuple[torch.nn.Module, Any]:
    """A zoo model in eval mode and its inputs, else one of structured_libraries.py's."""
    entry = next((e for e in ZOO if e.name == name), None)
    if entry is not None:
        return entry.build().eval(), entry.example_inputs()
    from _vision_models import import_vision
    from structured_libraries import build

    import_vision()
    return build(name)


def measure(name: str, repeats: int) -> tuple[float, float, dict[str, float]]:
    """(median prune s, median forward s, mean s per prune spent in each phase)."""
    base, x = _build(name)
    spent: dict[str, list[float]] = collections.defaultdict(list)
    originals = {phase: getattr(pruning, phase) for phase in PHASES}
    totals, forwards = [], []
    try:
        for phase, func in originals.items():
            setattr(pruning, phase, _timed(spent, phase, func))
        for i in range(repeats + 1):  # the first call warms up, uncounted
            model = copy.deepcopy(base)
            ignore = output_layers(model, x)
            start = time.perf_counter()
            pruning.prune(model, x, ratio=0.5, importance="l2", ignore=ignore, inplace=True)
            totals.append(time.perf_counter() - start)
            with torch.no_grad():
                start = time.perf_counter()
                run_model(base, x)
                forwards.append(time.perf_counter() - start)
            if i == 0:
                spent.clear()
                totals.clear()
                forwards.clear()
    finally:
        for phase, func in originals.items():
            setattr(pruning, phase, func)
    per_call = {phase: sum(spent[phase]) / repeats for phase in PHASES}
    return statistics.median(totals), statistics.median(forwards), per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--models",
                        default="resnet_basic,vgg_bn,mobilenet_v2,vit,dict_text_image,split_glu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.models.split(",")
    short = {"_member_views": "views", "score_groups": "score", "plan_with_indices": "plan",
             "_shallow_clone": "clone", "apply_plan": "apply", "_output_shapes": "validate",
             "build_groups": "groups"}
    columns = ["total", "forward", *(short.get(p, p) for p in PHASES), "trace-fwd"]
    print(f"ms per prune (median of {args.repeats}; phases: mean per prune, all their calls), "
          "one thread")
    print(f"{'model':<18}" + "".join(f"{c:>10}" for c in columns))
    for name in names:
        total, forward, per_call = measure(name, args.repeats)
        cells = [total, forward, *(per_call[p] for p in PHASES), per_call["trace"] - forward]
        print(f"{name:<18}" + "".join(f"{c * 1e3:>10.2f}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
