"""Structured pruning of every torchvision classification model: prunekit vs Torch-Pruning.

Each model of ``torchvision.models.list_models(module=torchvision.models)`` with fewer than
``--max-params`` parameters (from its weights' metadata; the bigger ones are listed as
skipped) is built with random weights in eval mode and pruned at ratio 0.5 with L2 filter
norms by both tools, each on its own fresh copy, on one 1x3xSxS input: ``--size`` where the
model accepts it, its minimum size where that is 224 or more (ViT, Swin, MaxViT). Both
leave the same output layers alone (``output_layers`` of benchmarks/structured.py).

Status per tool: ``ok`` (runs, output shape unchanged, parameters dropped), ``refused``
(prunekit raised one of its own errors up front, e.g. UnsupportedOpError naming the op),
``nothing`` (no parameter removed), ``FAIL`` (PruneValidationError, any other exception, a
timeout or a changed output shape). ``params`` and ``MACs`` are the fractions kept
(``prunekit.profile``; prunekit / Torch-Pruning), ``ratio`` is prunekit's seconds over
Torch-Pruning's (graph + prune, one run each, prunekit's including its validation forward).

Command (torchvision, timm and torch-pruning are benchmark-only dependencies):

    (in the venv of benchmarks/_vision_models.py, whose docstring says how to make it)
    PYTHONPATH=src .venv-vision/bin/python benchmarks/structured_torchvision.py \
        [--models resnet18,swin_t] [--timeout 180] [--size 128] [--max-params 62e6]
"""

from __future__ import annotations

import argparse
import copy
import signal
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vision_models import import_vision

from prunekit.errors import PrunekitError, PruneValidationError
from prunekit.metrics.profile import profile
from prunekit.structured.pruning import PruneResult
from structured import _timeout, output_layers, run_prunekit, run_torch_pruning


def build(tvm: Any, name: str, size: int = 128) -> tuple[nn.Module, torch.Tensor]:
    """The randomly initialised classifier ``name`` in eval mode and its 1x3xSxS input:
    ``size`` where the model accepts it, its minimum size where that is 224 or more."""
    minimum = tvm.get_model_weights(name).DEFAULT.meta["min_size"][0]
    side = max(minimum, size) if minimum < 224 else minimum
    torch.manual_seed(0)
    return tvm.get_model(name, weights=None).eval(), torch.randn(1, 3, side, side)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _logits(out: Any) -> torch.Tensor:
    """The logits of a torchvision output (GoogLeNet/Inception return a named tuple in
    training mode only, but be lenient)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def attempt(tool: Callable[[nn.Module, Any, list[nn.Module]], Any], base: nn.Module,
            x: torch.Tensor, expected: torch.Size, timeout_s: int) -> dict[str, Any]:
    """Prune a fresh copy of ``base`` with ``tool``: status, reason, seconds, pruned model."""
    model = copy.deepcopy(base)
    ignore = output_layers(model, x)
    start = time.perf_counter()
    signal.alarm(timeout_s)
    try:
        out = tool(model, x, ignore)
        seconds = time.perf_counter() - start
    except PruneValidationError as exc:
        return {"status": "FAIL", "why": f"PruneValidationError: {_short(exc)}"}
    except PrunekitError as exc:
        return {"status": "refused", "why": f"{type(exc).__name__}: {_short(exc)}"}
    except Exception as exc:  # a benchmark reports failures instead of stopping
        return {"status": "FAIL", "why": f"{type(exc).__name__}: {_short(exc)}"}
    finally:
        signal.alarm(0)
    pruned = out.model if isinstance(out, PruneResult) else out
    try:
        with torch.no_grad():
            shape = _logits(pruned.eval()(x)).shape
    except Exception as exc:
        return {"status": "FAIL", "why": f"pruned forward: {type(exc).__name__}: {_short(exc)}"}
    if shape != expected:
        return {"status": "FAIL", "why": f"output shape {tuple(shape)} != {tuple(expected)}"}
    if _params(pruned) >= _params(base):
        return {"status": "nothing", "why": "no parameter removed", "seconds": seconds}
    return {"status": "ok", "seconds": seconds, "model": pruned}


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: all)")
    parser.add_argument("--timeout", type=int, default=180, help="seconds per prune attempt")
    parser.add_argument("--size", type=int, default=128,
                        help="input side where the model accepts it (default 128)")
    parser.add_argument("--max-params", type=float, default=62e6,
                        help="skip models with more parameters (default 62e6)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _timeout)
    warnings.filterwarnings("ignore")  # torchvision's init and Torch-Pruning's chatter
    tvm, _ = import_vision()
    wanted = [n for n in args.models.split(",") if n]
    names = wanted or tvm.list_models(module=tvm)
    skipped: list[str] = []
    header = (f"{'model':<28}{'prunekit':>9}{'TP':>9}{'params pk/TP':>14}{'MACs pk/TP':>12}"
              f"{'pk s':>8}{'TP s':>8}{'ratio':>7}")
    print(header)
    print("-" * len(header))
    counts: dict[str, dict[str, int]] = {"pk": {}, "TP": {}}
    ratios: list[float] = []
    notes: list[str] = []
    for name in names:
        meta = tvm.get_model_weights(name).DEFAULT.meta
        if meta["num_params"] >= args.max_params and not wanted:
            skipped.append(f"{name} ({meta['num_params'] / 1e6:.0f} M)")
            continue
        base, x = build(tvm, name, args.size)
        with torch.no_grad():
            expected = _logits(base(x)).shape
        before = profile(base, x)
        res = {"pk": attempt(run_prunekit, base, x, expected, args.timeout),
               "TP": attempt(run_torch_pruning, base, x, expected, args.timeout)}
        kept_p, kept_m = [], []
        for tool, r in res.items():
            counts[tool][r["status"]] = counts[tool].get(r["status"], 0) + 1
            if r["status"] == "ok":
                after = profile(r["model"], x)
                kept_p.append(f"{after.total_params / before.total_params:.2f}")
                kept_m.append(f"{after.macs / max(1, before.macs):.2f}")
            else:
                kept_p.append("-")
                kept_m.append("-")
                notes.append(f"{name} [{tool}] {r['status']}: {r['why']}")
        ratio = "-"
        if res["pk"]["status"] == res["TP"]["status"] == "ok":
            ratios.append(res["pk"]["seconds"] / res["TP"]["seconds"])
            ratio = f"{ratios[-1]:.2f}"
        secs = [f"{r['seconds']:.2f}" if "seconds" in r else "-" for r in res.values()]
        print(f"{name + f' @{x.shape[-1]}':<28}{res['pk']['status']:>9}{res['TP']['status']:>9}"
              f"{'/'.join(kept_p):>14}{'/'.join(kept_m):>12}{secs[0]:>8}{secs[1]:>8}"
              f"{ratio:>7}", flush=True)
        del base, res
    print("-" * len(header))
    for note in notes:
        print(note)
    if skipped:
        print(f"skipped (>= {args.max_params / 1e6:.0f} M parameters): {', '.join(skipped)}")
    summary = "; ".join(f"{tool}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                        for tool, c in counts.items())
    med = statistics.median(ratios) if ratios else float("nan")
    print(f"summary: {summary}; median time ratio prunekit / Torch-Pruning "
          f"(both ok, {len(ratios)} models) {med:.2f}")


if __name__ == "__main__":
    main()
