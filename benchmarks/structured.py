"""Structured pruning on the test zoo: prunekit vs Torch-Pruning (DepGraph), side by side.

For every zoo model (tests/structured/zoo.py) at ratio 0.5 with L2 filter norms, both tools
prune a fresh copy; a run counts as a success when the pruned model runs and keeps its output
shapes *and* lost parameters. Columns: success per tool, graph+prune wall time and their
ratio (prunekit / Torch-Pruning, median of `--repeats`), parameters and MACs kept, and for the
convolutional models the measured CPU latency speed-up divided by the MACs reduction
(1.0 = latency falls exactly as MACs do), for prunekit's pruned model (``lat/MACs``) and for
Torch-Pruning's (``TP l/M``): where both are low the architecture, not the pruner, is why.

``floor`` is the time ratio prunekit would reach if everything but the two forwards it runs
(the trace and the validation of the pruned model, ~the median no-grad forward of each)
took no time: a lower bound that no reduction of prunekit's own overhead can beat.

What is timed, like for like: Torch-Pruning's ``MetaPruner`` construction (its dependency
graph: one autograd forward) plus ``pruner.step()``, in place; prunekit's
``prune(..., inplace=True)``: trace (one forward), groups, importance, allocation, plan,
surgery on a tensor-sharing clone and the validation forward pass that Torch-Pruning does
not do. prunekit's before/after profiles (one flop-counting forward each) are measured when
``result.before`` / ``result.after`` are first read (and ``result.coverage`` is built when
first read, never here), so ``pk s`` leaves them out; the
``pk+prof`` column is the same call plus reading both profiles (the cost a caller that
prints ``result.summary()`` pays), and the summary line gives both medians. The two tools
run in alternation (prunekit, Torch-Pruning, prunekit, ...) on fresh copies of the model.

Both tools are told to leave the same output layers alone: the modules whose output is
(a view of) a model output.

Command (torch-pruning is a benchmark-only dependency):

    .venv/bin/pip install -c constraints.txt torch-pruning
    .venv/bin/python benchmarks/structured.py [--repeats 3] [--models lenet5,vgg_bn] [--timeout 60]
    .venv/bin/python benchmarks/structured.py --realistic   # ResNet-18/50, VGG-16-BN, MobileNetV2
                                                            # at 1x3x224x224 instead of the zoo

``--realistic`` times the same two calls on the full-size models of
``benchmarks/structured_latency.py`` (their classifier left alone), alternating the tools.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.structured.zoo

from tests.structured.zoo import ZOO, ZooEntry, output_tensors  # noqa: E402

from prunekit._inputs import run_model  # noqa: E402
from prunekit.metrics.latency import benchmark_latency  # noqa: E402
from prunekit.metrics.profile import profile  # noqa: E402
from prunekit.structured.pruning import PruneResult, prune  # noqa: E402

CONV_FAMILIES = {"lenet5", "vgg_bn", "resnet_basic", "resnet_bottleneck", "resnext",
                 "mobilenet_v2", "mobilenet_v3", "densenet", "inception", "shufflenet_v2",
                 "unet", "convnext", "audio_m5", "conv3d_video"}


def output_layers(model: nn.Module, inputs: Any) -> list[nn.Module]:
    """Modules whose output storage is shared with a model output (the heads to keep).

    Every layer output is kept alive until the end of the forward, so a freed intermediate's
    address cannot be reused by a later tensor and matched to the wrong layer."""
    produced: dict[int, nn.Module] = {}
    alive: list[torch.Tensor] = []

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        for tensor in output_tensors(output):
            alive.append(tensor)
            produced[tensor.untyped_storage().data_ptr()] = module

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    with torch.no_grad():
        outs = output_tensors(run_model(model, inputs))
    for h in hooks:
        h.remove()
    return [produced[t.untyped_storage().data_ptr()] for t in outs
            if t.untyped_storage().data_ptr() in produced]


def _shapes(out: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in output_tensors(out)]


def run_prunekit(model: nn.Module, inputs: Any, ignore: list[nn.Module], *,
                 strict: bool = True) -> PruneResult:
    return prune(model, inputs, ratio=0.5, importance="l2", ignore=ignore, inplace=True,
                 strict=strict)


def run_torch_pruning(model: nn.Module, inputs: Any, ignore: list[nn.Module]) -> nn.Module:
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(model, inputs, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=ignore)
    pruner.step()
    return model


def _timeout(signum: int, frame: Any) -> None:
    raise TimeoutError("no result within the time limit")


def attempt(tool: Callable[[nn.Module, Any, list[nn.Module]], Any], entry: ZooEntry,
            repeats: int, timeout_s: int) -> dict[str, Any]:
    """Prune fresh copies ``repeats`` times; success, median seconds and the pruned model
    (for a prunekit result also the median seconds including both profiles)."""
    base = entry.build().eval()
    inputs = entry.example_inputs()
    with torch.no_grad():
        expected = _shapes(run_model(base, inputs))
    params_before = sum(p.numel() for p in base.parameters())
    seconds: list[float] = []
    profiled: list[float] = []
    pruned: nn.Module | None = None
    for _ in range(repeats):
        model = copy.deepcopy(base)
        ignore = output_layers(model, inputs)
        start = time.perf_counter()
        signal.alarm(timeout_s)  # a tool that hangs (Torch-Pruning does on some models) fails
        try:
            out = tool(model, inputs, ignore)
            seconds.append(time.perf_counter() - start)
            if isinstance(out, PruneResult):
                _ = out.before, out.after
                profiled.append(time.perf_counter() - start)
                out = out.model
            pruned = out
        except Exception as exc:  # a benchmark reports failures instead of stopping
            return {"ok": False, "why": f"{type(exc).__name__}: {str(exc)[:60]}"}
        finally:
            signal.alarm(0)
    assert pruned is not None
    try:
        with torch.no_grad():
            got = _shapes(run_model(pruned, inputs))
    except Exception as exc:
        return {"ok": False, "why": f"forward fails: {type(exc).__name__}"}
    params_after = sum(p.numel() for p in pruned.parameters())
    if got != expected:
        return {"ok": False, "why": f"output shapes {got} != {expected}"}
    if params_after >= params_before:
        return {"ok": False, "why": "nothing removed"}
    return {"ok": True, "seconds": statistics.median(seconds), "model": pruned,
            "profiled": statistics.median(profiled) if profiled else float("nan")}


def attempt_both(entry: ZooEntry, repeats: int, timeout_s: int) -> tuple[dict[str, Any], ...]:
    """``attempt`` for prunekit and Torch-Pruning in alternation, one repeat each per round
    (load from other processes on a shared machine falls on both alike); a tool that fails
    once is not run again."""
    runs: list[list[dict[str, Any]]] = [[], []]
    for _ in range(repeats):
        for i, tool in enumerate((run_prunekit, run_torch_pruning)):
            if not runs[i] or runs[i][-1]["ok"]:
                runs[i].append(attempt(tool, entry, 1, timeout_s))
    out = []
    for results in runs:
        if not results[-1]["ok"]:
            out.append(results[-1])
            continue
        merged = dict(results[-1])
        for key in ("seconds", "profiled"):
            merged[key] = statistics.median(r[key] for r in results)
        out.append(merged)
    return tuple(out)


def _batched(inputs: Any, factor: int) -> Any:
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        return inputs.repeat(factor, *([1] * (inputs.dim() - 1)))
    return inputs


def _forward_s(model: nn.Module, inputs: Any, repeats: int = 15) -> float:
    """Median seconds of a no-grad forward (after one warm-up call)."""
    seconds = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            run_model(model, inputs)
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def latency_over_macs(entry: ZooEntry, pruned: nn.Module) -> float:
    base = entry.build().eval()
    inputs = _batched(entry.example_inputs(), 16)
    macs_ratio = profile(base, inputs).macs / max(1, profile(pruned, inputs).macs)
    dense = benchmark_latency(base, inputs, warmup=5, repeats=30, threads=1).median_ms
    small = benchmark_latency(pruned.eval(), inputs, warmup=5, repeats=30, threads=1).median_ms
    return (dense / small) / macs_ratio


def realistic(repeats: int) -> None:
    """Graph+prune time of both tools on full-size CNNs at 224x224 (one thread)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from structured_latency import MODELS

    print(f"{'model':<14}{'prunekit ms':>12}{'TP ms':>9}{'ratio':>7}")
    ratios = []
    for name, (build, head_of) in MODELS.items():
        base, x = build().eval(), torch.randn(1, 3, 224, 224)
        times: dict[str, list[float]] = {"pk": [], "tp": []}
        for _ in range(repeats):
            for key, tool in (("pk", run_prunekit), ("tp", run_torch_pruning)):
                model = copy.deepcopy(base)
                start = time.perf_counter()
                tool(model, x, [head_of(model)])
                times[key].append(time.perf_counter() - start)
        pk, tp = (statistics.median(times[k]) for k in ("pk", "tp"))
        ratios.append(pk / tp)
        print(f"{name:<14}{pk * 1e3:>12.0f}{tp * 1e3:>9.0f}{pk / tp:>7.2f}")
    print(f"median ratio prunekit / Torch-Pruning: {statistics.median(ratios):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="", help="comma-separated zoo names (default: all)")
    parser.add_argument("--timeout", type=int, default=60, help="seconds per prune attempt")
    parser.add_argument("--realistic", action="store_true",
                        help="full-size CNNs at 224x224 instead of the zoo")
    args = parser.parse_args()
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _timeout)
    warnings.filterwarnings("ignore", module="torch_pruning")  # its per-model chatter
    if args.realistic:
        realistic(args.repeats)
        return
    wanted = {n for n in args.models.split(",") if n}
    header = (f"{'model':<20}{'prunekit':>10}{'TP':>10}{'pk s':>9}{'pk+prof':>9}{'TP s':>9}"
              f"{'ratio':>7}"
              f"{'floor':>7}{'params':>8}{'MACs':>8}{'lat/MACs':>9}{'TP l/M':>8}  note")
    print(header)
    print("-" * len(header))
    ok_pk = ok_tp = 0
    ratios: list[float] = []
    ratios_profiled: list[float] = []
    floors: list[float] = []
    for entry in ZOO:
        if wanted and entry.name not in wanted:
            continue
        pk, tp = attempt_both(entry, args.repeats, args.timeout)
        ok_pk += pk["ok"]
        ok_tp += tp["ok"]
        params = macs = lat = tp_lat = ratio = floor = "-"
        if pk["ok"]:
            base = entry.build().eval()
            inputs = entry.example_inputs()
            before, after = profile(base, inputs), profile(pk["model"], inputs)
            params = f"{after.total_params / before.total_params:.2f}"
            macs = f"{after.macs / max(1, before.macs):.2f}"
            if entry.name in CONV_FAMILIES:
                lat = f"{latency_over_macs(entry, pk['model']):.2f}"
                if tp["ok"]:
                    tp_lat = f"{latency_over_macs(entry, tp['model']):.2f}"
        if pk["ok"] and tp["ok"]:
            r = pk["seconds"] / tp["seconds"]
            ratios.append(r)
            ratios_profiled.append(pk["profiled"] / tp["seconds"])
            ratio = f"{r:.2f}"
            both = _forward_s(base, inputs) + _forward_s(pk["model"].eval(), inputs)
            floors.append(both / tp["seconds"])
            floor = f"{floors[-1]:.2f}"
        note = "; ".join(f"{tool}: {res['why']}" for tool, res in (("pk", pk), ("TP", tp))
                         if not res["ok"])
        status = ["ok" if res["ok"] else "FAIL" for res in (pk, tp)]
        print(f"{entry.name:<20}{status[0]:>10}{status[1]:>10}"
              f"{pk.get('seconds', float('nan')):>9.3f}{pk.get('profiled', float('nan')):>9.3f}"
              f"{tp.get('seconds', float('nan')):>9.3f}"
              f"{ratio:>7}{floor:>7}{params:>8}{macs:>8}{lat:>9}{tp_lat:>8}  {note}")
    print("-" * len(header))
    med = statistics.median(ratios) if ratios else float("nan")
    med_prof = statistics.median(ratios_profiled) if ratios_profiled else float("nan")
    med_floor = statistics.median(floors) if floors else float("nan")
    print(f"success: prunekit {ok_pk}, Torch-Pruning {ok_tp}; median time ratio "
          f"(prunekit / Torch-Pruning, where both succeed) {med:.2f}; with prunekit's "
          f"before/after profiles read {med_prof:.2f}; floor (its two forwards alone) "
          f"{med_floor:.2f}, at or under 0.5 on {sum(f <= 0.5 for f in floors)} of "
          f"{len(floors)}")


if __name__ == "__main__":
    main()
