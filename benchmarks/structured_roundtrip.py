"""Save, reload and export what ``prune`` gives, on the sweeps' real models (not a test).

For each model of a source (``zoo``: tests/structured/zoo.py; ``hf``: the random-init
Transformers models of benchmarks/structured_transformers.py; ``tv``: torchvision's
classifiers; ``timm``; ``libs``: the detection, segmentation, video and diffusion models of
benchmarks/structured_libraries.py), in eval mode:

1. ``prune(model, x, ratio=0.5, importance="l2")``, strict, the output layers left alone
   (``output_layers`` of benchmarks/structured.py), as the sweeps run it;
2. ``pk.save(result, dir)``; a fresh model from the same factory, every float tensor of its
   state moved by random noise (so nothing can pass unless the checkpoint restores it),
   then ``pk.load(dir, fresh)``;
3. the reloaded model's outputs against the pruned model's, on the example input and, where
   the input is one tensor or a dict of tensors, on a second input of the same shapes
   (``load max|d|``; ``0`` is bit-identical);
4. with ``--onnx``: ``pk.export_onnx(pruned, x, file)`` with its own ONNX Runtime check
   (``onnx``: ``ok``, ``mismatch`` with the max abs diff, or the error; where it fails, the
   unpruned model is exported too, and ``unpruned fails too`` says the pruning is not why).

With ``--twice`` the pruned model is pruned again (ratio 0.5 of what is left) before it is
saved, so the checkpoint holds two plans that ``pk.load`` replays in turn.

A row's ``status`` is ``ok`` when the reload matches within 1e-5 (relative to the output's
scale) on every input, ``DIFF`` when it runs but differs, ``FAIL`` when save or load raises,
and ``skip`` when ``prune`` itself does not prune the model (the sweeps report those).

Commands (the vision and library sources need the venv of benchmarks/_vision_models.py;
``--onnx`` needs onnx and onnxruntime, the ``onnx`` extra):

    .venv/bin/python benchmarks/structured_roundtrip.py --source zoo --onnx
    (ulimit -v 20000000; .venv/bin/python benchmarks/structured_roundtrip.py --source hf)
    .venv-vision/bin/python benchmarks/structured_roundtrip.py --source tv --onnx
    .venv-vision/bin/python benchmarks/structured_roundtrip.py --source timm [--set all]
    .venv-vision/bin/python benchmarks/structured_roundtrip.py --source libs
    .venv/bin/python benchmarks/structured_roundtrip.py --source zoo --twice   # (any source)
"""

from __future__ import annotations

import argparse
import copy
import functools
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.structured.zoo
sys.path.insert(0, str(ROOT / "benchmarks"))

from prunekit._inputs import run_model, walk_tensors  # noqa: E402
from prunekit.io.checkpoint import load, save  # noqa: E402
from prunekit.io.onnx import export_onnx  # noqa: E402
from prunekit.structured.pruning import prune  # noqa: E402
from structured import _timeout, output_layers  # noqa: E402

Maker = Callable[[], tuple[nn.Module, Any]]


def makers(source: str, model_set: str) -> dict[str, Maker]:
    """Name → a function that builds the seeded model (eval mode) and its inputs."""
    if source == "zoo":
        from tests.structured.zoo import ZOO

        return {e.name: functools.partial(_seeded, lambda e=e: (e.build(), e.example_inputs()))
                for e in ZOO}
    if source == "hf":
        import structured_transformers

        return {name: functools.partial(_seeded, make)
                for name, make in structured_transformers._cases().items()}
    from _vision_models import import_vision

    tvm, timm = import_vision()
    if source == "tv":
        import structured_torchvision

        return {name: functools.partial(structured_torchvision.build, tvm, name)
                for name in tvm.list_models(module=tvm)
                if tvm.get_model_weights(name).DEFAULT.meta["num_params"] < 62e6}
    if source == "timm":
        import structured_timm

        return {name: functools.partial(structured_timm.build, timm, name, 128)
                for name in structured_timm.SETS[model_set]}
    import structured_libraries

    names = structured_libraries._runnable(list(structured_libraries.SETS["all"]))
    return {name: functools.partial(structured_libraries.build, name) for name in names}


def _seeded(make: Maker) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    model, inputs = make()
    return model.eval(), inputs


def _second_input(inputs: Any) -> Any | None:
    """Inputs of the same shapes with new values (ids stay in the range the first had), or
    None where the inputs are not one tensor or a dict of tensors."""
    def fresh(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            return torch.randn_like(t)
        if t.dtype == torch.bool or t.numel() == 0:
            return t.clone()
        low, high = int(t.min()), int(t.max())
        return torch.randint(low, high + 1, t.shape, dtype=t.dtype) if high > low else t.clone()

    if isinstance(inputs, torch.Tensor):
        return fresh(inputs)
    if isinstance(inputs, dict) and all(isinstance(v, torch.Tensor) for v in inputs.values()):
        # masks and ids that carry structure (attention masks, positions) stay as they are
        return {k: fresh(v) if v.is_floating_point() or k == "input_ids" else v.clone()
                for k, v in inputs.items()}
    return None


def _perturbed(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point() and tensor.numel():
                tensor.add_(torch.randn_like(tensor))
    return model


def _gap(a: Any, b: Any) -> float:
    """max |a - b| over the outputs' tensors, divided by max(1, max |a|); inf if the
    structures differ."""
    left, right = [t for _, t in walk_tensors(a)], [t for _, t in walk_tensors(b)]
    if len(left) != len(right) or any(x.shape != y.shape for x, y in zip(left, right, strict=True)):
        return float("inf")
    worst = 0.0
    for x, y in zip(left, right, strict=True):
        if x.is_floating_point():
            scale = max(1.0, float(x.abs().max())) if x.numel() else 1.0
            worst = max(worst, float((x - y).abs().max()) / scale if x.numel() else 0.0)
        elif not torch.equal(x, y):
            return float("inf")
    return worst


def roundtrip(make: Maker, with_onnx: bool, timeout_s: int,
              twice: bool = False) -> tuple[str, str, str]:
    """(status, load gap, onnx column) for one model; ``twice``: the pruned model is pruned
    again (iterative pruning) before it is saved."""
    model, x = make()
    signal.alarm(timeout_s)
    try:
        result = prune(model, x, ratio=0.5, importance="l2", ignore=output_layers(model, x))
        if twice:
            again = result.model
            result = prune(again, x, ratio=0.5, importance="l2", ignore=output_layers(again, x))
    except Exception as exc:  # not this benchmark's subject: the sweeps report it
        return "skip", "-", f"prune: {type(exc).__name__}"
    finally:
        signal.alarm(0)
    pruned = result.model.eval()
    second = _second_input(x)
    gaps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            save(result, Path(tmp) / "ckpt")
            fresh = _perturbed(make()[0])
            reloaded = load(Path(tmp) / "ckpt", fresh).eval()
            with torch.no_grad():
                for inputs in (x, second):
                    if inputs is not None:
                        gaps.append(_gap(run_model(pruned, copy.deepcopy(inputs)),
                                         run_model(reloaded, copy.deepcopy(inputs))))
        except Exception as exc:  # a benchmark reports failures instead of stopping
            why = " ".join(str(exc).split())[:100]
            return "FAIL", "-", f"{type(exc).__name__}: {why}"
        onnx = "-"
        if with_onnx:
            onnx = _export(pruned, x, Path(tmp) / "model.onnx")
            if onnx != "ok" and _export(model, x, Path(tmp) / "unpruned.onnx") != "ok":
                onnx = f"unpruned fails too ({onnx[:60]})"
    worst = max(gaps)
    return ("ok" if worst <= 1e-5 else "DIFF"), f"{worst:.1e}", onnx


def _export(model: nn.Module, x: Any, path: Path) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(model, x, path, exporter="torchscript")
    except Exception as exc:  # a benchmark reports failures instead of stopping
        name = type(exc).__name__
        if name == "ExportMismatchError":
            return "mismatch: " + " ".join(str(exc).split())[:80]
        return f"{name}: {' '.join(str(exc).split())[:80]}"
    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("zoo", "hf", "tv", "timm", "libs"), default="zoo")
    parser.add_argument("--set", default="main", help="timm's set: main, extra or all")
    parser.add_argument("--models", default="", help="comma-separated names (default: all)")
    parser.add_argument("--onnx", action="store_true", help="also export and check ONNX")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per prune")
    parser.add_argument("--twice", action="store_true",
                        help="prune the pruned model again before saving (iterative pruning)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    signal.signal(signal.SIGALRM, _timeout)
    table = makers(args.source, args.set)
    names = [n for n in args.models.split(",") if n] or list(table)
    print(f"{'model':<36}{'status':>7}{'load max|d|':>13}  onnx")
    counts: dict[str, int] = {}
    onnx_ok = onnx_too = 0
    for name in names:
        status, gap, onnx = roundtrip(table[name], args.onnx, args.timeout, args.twice)
        counts[status] = counts.get(status, 0) + 1
        onnx_ok += onnx == "ok"
        onnx_too += onnx.startswith("unpruned fails too")
        print(f"{name:<36}{status:>7}{gap:>13}  {onnx}", flush=True)
    tried = len(names) - counts.get("skip", 0)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    line = f"{len(names)} models: {summary}; reload identical on {counts.get('ok', 0)}/{tried}"
    if args.onnx:
        line += (f"; ONNX exported and matched on {onnx_ok}/{tried} (and {onnx_too} where the "
                 "unpruned model fails too)")
    print(line)


if __name__ == "__main__":
    main()
