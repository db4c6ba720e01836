"""Structured pruning of 117 timm architectures: prunekit vs Torch-Pruning, side by side.

One small variant per timm family (CNNs, hybrids, MLPs, vision transformers; 70 in the
first set, 47 more families and variants in ``--set extra``), randomly
initialised, in eval mode, on one 1x3xSxS input: S is the model's ``pretrained_cfg``
input size where the model fixes it, else ``--size`` (default 128, to keep the run short)
or the configured size if the model does not run at the small one. Each tool prunes its own
fresh copy at ratio 0.5 with L2 filter norms, both told to leave the output layers alone
(``output_layers`` of ``benchmarks/structured.py``). A tool's run is

* ``ok``       it returned, the pruned model runs, output shape unchanged, parameters dropped;
* ``refused``  (prunekit only) a prunekit error raised before any surgery, e.g. an
               ``UnsupportedOpError`` naming the op it cannot map channels through;
* ``nothing``  it returned but removed no parameter (prunekit: ``NothingToPruneError``);
* ``FAIL``     ``PruneValidationError``, any other exception or time-out, a pruned model
               that does not run or changes its output shape.

Columns: the two statuses, parameters and MACs kept by prunekit (``prunekit.profile``),
Torch-Pruning's parameters kept, each tool's wall time (graph + prune; prunekit's includes
its validation forward) and their ratio (prunekit / Torch-Pruning). The summary counts each
status per tool and gives the median time ratio over the models both tools prune ``ok``.

Command (timm, torchvision and torch-pruning are benchmark-only dependencies):

    (in the venv of benchmarks/_vision_models.py, whose docstring says how to make it)
    .venv-vision/bin/python benchmarks/structured_timm.py [--models resnet18,vit_tiny_patch16_224]
                                                   [--set main|extra|all]
                                                   [--timeout 120] [--size 128]
                                                   [--no-strict] [--skip-tp]
"""

from __future__ import annotations

import argparse
import copy
import functools
import signal
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vision_models import import_vision

from prunekit._inputs import run_model
from prunekit.errors import NothingToPruneError, PrunekitError, PruneValidationError
from prunekit.metrics.profile import profile
from prunekit.structured.pruning import PruneResult
from structured import (
    _shapes,
    _timeout,
    output_layers,
    output_tensors,
    run_prunekit,
    run_torch_pruning,
)

MODELS = (
    # residual CNNs and their variants
    "resnet18", "resnext26ts", "seresnet18", "skresnet18", "resnest14d", "res2net50_14w_8s",
    "gcresnet33ts", "halonet26t", "tresnet_m", "nf_resnet26", "regnetx_002", "gernet_s",
    "repvgg_a0", "mobileone_s0", "selecsls42b", "dla34", "dpn48b", "hrnet_w18_small",
    "cspresnet50", "cs3darknet_s", "densenet121", "ese_vovnet19b_dw", "inception_v3",
    "legacy_xception", "hgnet_tiny",
    # mobile CNNs
    "efficientnet_b0", "tinynet_a", "mobilenetv3_small_100", "mobilenetv4_conv_small",
    "ghostnet_100", "ghostnetv2_100", "mnasnet_100", "rexnet_100", "lcnet_050", "repvit_m0_9",
    "fasternet_t0", "starnet_s1",
    # modern CNNs and conv/attention hybrids
    "convnext_atto", "convnextv2_atto", "inception_next_atto", "mambaout_femto",
    "poolformer_s12", "convmixer_768_32", "edgenext_xx_small", "fastvit_t8", "mobilevit_xxs",
    "mobilevitv2_050", "efficientformer_l1", "efficientvit_b0", "efficientvit_m0",
    "levit_128s", "tiny_vit_5m_224", "coatnet_pico_rw_224", "maxvit_pico_rw_256",
    # vision transformers and MLPs
    "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "eva02_tiny_patch14_224",
    "cait_xxs24_224", "xcit_nano_12_p16_224", "convit_tiny", "pit_ti_224", "crossvit_tiny_240",
    "tnt_s_patch16_224", "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256",
    "pvt_v2_b0", "twins_pcpvt_small", "mixer_s16_224", "resmlp_12_224", "gmlp_ti16_224",
)

# a second set (``--set extra``): families and variants added after the first sweep
EXTRA = (
    "resnetv2_50x1_bit", "nfnet_l0", "vovnet39a", "xception41", "inception_v4",
    "inception_resnet_v2", "sequencer2d_s", "volo_d1_224", "visformer_tiny", "nest_tiny",
    "focalnet_tiny_srf", "davit_tiny", "hiera_tiny_224", "mvitv2_tiny",
    "deit3_small_patch16_224", "flexivit_small", "gcvit_xxtiny", "coat_lite_tiny",
    "rdnet_tiny", "nextvit_small", "fbnetv3_b", "hardcorenas_a", "mixnet_s",
    "tf_efficientnetv2_b0", "lambda_resnet26t", "bat_resnext26ts", "botnet26t_256",
    "eca_resnet33ts", "cspdarknet53", "darknet53", "ecaresnet26t", "resnetrs50", "regnety_002",
    "regnetz_b16", "res2next50", "vgg11_bn", "semnasnet_100", "spnasnet_100",
    "efficientformerv2_s0", "hgnetv2_b0", "fastvit_mci0", "levit_conv_128s", "ghostnetv3_100",
    "vit_small_patch16_rope_224", "vit_relpos_small_patch16_224",
    "vit_srelpos_small_patch16_224", "beitv2_base_patch16_224",
)
SETS = {"main": MODELS, "extra": EXTRA, "all": MODELS + EXTRA}


def build(timm: Any, name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    """The randomly initialised model in eval mode and its 1x3xSxS input."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    cfg = model.pretrained_cfg
    full = int(cfg["input_size"][-1])
    if not cfg.get("fixed_input_size", False) and size < full:
        x = torch.randn(1, 3, size, size)
        try:
            with torch.no_grad():
                model(x)
            return model, x
        except Exception:  # the model needs its configured size
            pass
    return model, torch.randn(1, 3, full, full)


def _classify_error(tool: str, exc: Exception) -> tuple[str, str]:
    why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    if tool == "pk" and isinstance(exc, NothingToPruneError):
        return "nothing", why
    if tool == "pk" and isinstance(exc, PrunekitError) and not isinstance(
            exc, PruneValidationError):
        return "refused", why
    return "FAIL", why


def attempt(tool: str, run: Callable[[nn.Module, Any, list[nn.Module]], Any], base: nn.Module,
            x: Any, timeout_s: int) -> dict[str, Any]:
    """Prune a fresh copy of ``base`` (inputs ``x``: a tensor, a tuple of positional inputs
    or a dict of keyword inputs); status, reason, seconds and the pruned model."""
    model = copy.deepcopy(base)
    ignore = output_layers(model, x)
    with torch.no_grad():
        expected = _shapes(run_model(base, x))
    signal.alarm(timeout_s)
    start = time.perf_counter()
    try:
        out = run(model, x, ignore)
        seconds = time.perf_counter() - start
        pruned = out.model if isinstance(out, PruneResult) else out
        with torch.no_grad():
            got = _shapes(run_model(pruned, x))
    except Exception as exc:  # a benchmark reports failures instead of stopping
        status, why = _classify_error(tool, exc)
        return {"status": status, "why": why}
    finally:
        signal.alarm(0)
    if got != expected:
        return {"status": "FAIL", "why": f"output shape {got} != {expected}"}
    kept = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in base.parameters())
    if kept >= 1.0:
        return {"status": "nothing", "why": "no parameter removed"}
    return {"status": "ok", "why": "", "seconds": seconds, "model": pruned, "params": kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated timm names (default: --set)")
    parser.add_argument("--set", choices=sorted(SETS), default="main",
                        help="the 70 families of the first sweep, the 47 added later, or both")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per prune attempt")
    parser.add_argument("--size", type=int, default=128,
                        help="input side for models that accept any size")
    add_tool_options(parser)
    args = parser.parse_args()
    _, timm = import_vision()
    names = [n for n in args.models.split(",") if n] or list(SETS[args.set])
    sweep(names, functools.partial(build, timm, size=args.size), args)


def add_tool_options(parser: argparse.ArgumentParser) -> None:
    """``--no-strict`` and ``--skip-tp``, as every sweep takes them."""
    parser.add_argument("--no-strict", action="store_true",
                        help="prunekit with strict=False (unmappable ops and groups whose cut "
                             "fails the forward check kept whole)")
    parser.add_argument("--skip-tp", action="store_true", help="prunekit only")


def sweep(names: list[str], make: Callable[[str], tuple[nn.Module, Any]],
          args: argparse.Namespace, width: int = 32) -> None:
    """Prune ``make(name)`` with each tool, one table row per model, then the summary
    (the statuses and columns of the module docstring); ``args`` holds ``timeout``,
    ``no_strict`` and ``skip_tp``."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _timeout)
    warnings.filterwarnings("ignore")  # the model libraries' and Torch-Pruning's chatter
    header = (f"{'model':<{width}}{'size':>5}{'prunekit':>9}{'TP':>9}{'params':>8}{'MACs':>7}"
              f"{'TP par':>8}{'pk s':>8}{'TP s':>8}{'ratio':>7}  note")
    if args.no_strict:
        print("prunekit runs with strict=False")
    print(header)
    print("-" * len(header))
    counts: dict[str, Counter[str]] = {"pk": Counter(), "TP": Counter()}
    ratios: list[float] = []
    for name in names:
        base, x = make(name)
        pk = attempt("pk", functools.partial(run_prunekit, strict=not args.no_strict), base, x,
                     args.timeout)
        tp = ({"status": "skipped", "why": ""} if args.skip_tp
              else attempt("TP", run_torch_pruning, base, x, args.timeout))
        counts["pk"][pk["status"]] += 1
        counts["TP"][tp["status"]] += 1
        params = macs = tp_params = ratio = "-"
        if pk["status"] == "ok":
            params = f"{pk['params']:.2f}"
            macs = f"{profile(pk['model'], x).macs / max(1, profile(base, x).macs):.2f}"
        if tp["status"] == "ok":
            tp_params = f"{tp['params']:.2f}"
        if pk["status"] == "ok" and tp["status"] == "ok":
            ratios.append(pk["seconds"] / tp["seconds"])
            ratio = f"{ratios[-1]:.2f}"
        note = "; ".join(f"{tool}: {res['why']}" for tool, res in (("pk", pk), ("TP", tp))
                         if res["why"])
        print(f"{name:<{width}}{_side(x):>5}{pk['status']:>9}{tp['status']:>9}{params:>8}"
              f"{macs:>7}{tp_params:>8}{pk.get('seconds', float('nan')):>8.2f}"
              f"{tp.get('seconds', float('nan')):>8.2f}{ratio:>7}  {note}", flush=True)
    print("-" * len(header))
    statuses = ("ok", "refused", "nothing", "FAIL")
    summary = "; ".join(
        f"{label} " + ", ".join(f"{s} {counts[key][s]}" for s in statuses
                                if counts[key][s] or s == "ok")
        for key, label in (("pk", "prunekit"), ("TP", "Torch-Pruning")))
    med = statistics.median(ratios) if ratios else float("nan")
    print(f"{len(names)} models: {summary}; median time ratio (prunekit / Torch-Pruning, "
          f"both ok on {len(ratios)}) {med:.2f}")


def _side(inputs: Any) -> int:
    """The last dim of the first input tensor (the image side, for the size column)."""
    return int(next(iter(output_tensors(inputs))).shape[-1])


if __name__ == "__main__":
    main()
