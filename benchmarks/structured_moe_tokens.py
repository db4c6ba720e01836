"""Structured ``prune`` of mixture-of-experts models on examples too small to reach every
expert: does it prune, and does it keep what an example that reaches every expert keeps?

Two sets, random init, ratio 0.5, L2, default ``strict=True``:

* ``layouts``: the hand-written MoE layers of tests/llm/moe_models.py (experts in a
  ``ModuleList`` / ``ModuleDict`` / nested wrapper, stacked, Shazeer's raw ``w_gate``, ...)
  in a two-layer LM, each pruned with 1, 2 and 3 tokens;
* ``transformers``: every MoE family of the installed Transformers that
  benchmarks/experts_transformers.py builds tiny (4 experts, top-2), pruned with 2 tokens.

For each: ``ok`` and whether experts the example never reached were pruned like their
siblings (``copied``; prune warns so) or every expert ran (``reached``), the fraction of
parameters kept, and ``same plan``: whether the plan equals the one from a 256-token
example (with a weight criterion a copied expert is scored by its own weights, so it should);
a refusal or error is shown by its first words.

    .venv/bin/python benchmarks/structured_moe_tokens.py [--set layouts|transformers|all]
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.llm.moe_models
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.llm import moe_models  # noqa: E402

from prunekit.structured import prune  # noqa: E402

LAYOUTS = ("ListMoE", "StackedMoE", "NormedMoE", "HashMoE", "ShazeerMoE", "DictMoE",
           "NestedMoE", "CosineMoE", "HiddenListMoE")


def _timeout(signum: int, frame: Any) -> None:
    raise TimeoutError("no result within the time limit")


def attempt(model: nn.Module, few: Any, many: Any) -> str:
    """One row's result columns for ``model`` pruned on ``few`` and on ``many``."""
    signal.alarm(180)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            small = prune(model, few, ratio=0.5)
            copied = any("never ran on the example" in str(w.message) for w in caught)
            large = prune(model, many, ratio=0.5)
        same = small.plan == large.plan
        return (f"{'ok':>8}{'copied' if copied else 'reached':>9}{small.params_kept:>7.2f}"
                f"{same!s:>11}")
    except Exception as exc:  # a benchmark reports failures instead of stopping
        return f"{'FAIL':>8}  {type(exc).__name__}: {' '.join(str(exc).split())[:90]}"
    finally:
        signal.alarm(0)


def layouts() -> list[tuple[str, Callable[[], tuple[nn.Module, Any, Any]]]]:
    def case(layout: str, tokens: int) -> Callable[[], tuple[nn.Module, Any, Any]]:
        def make() -> tuple[nn.Module, Any, Any]:
            torch.manual_seed(0)
            model = moe_models.TinyMoELM(getattr(moe_models, layout)).eval()
            return (model, torch.randint(0, 50, (1, tokens)),
                    torch.randint(0, 50, (4, 64)))
        return make
    return [(f"{layout} ({tokens} tok)", case(layout, tokens))
            for layout in LAYOUTS for tokens in (1, 2, 3)]


def transformers_families() -> list[tuple[str, Callable[[], tuple[nn.Module, Any, Any]]]]:
    from experts_transformers import build, moe_types

    def case(model_type: str) -> Callable[[], tuple[nn.Module, Any, Any]]:
        def make() -> tuple[nn.Module, Any, Any]:
            model = build(model_type)
            torch.manual_seed(1)
            return (model, {"input_ids": torch.randint(3, 100, (1, 2))},
                    {"input_ids": torch.randint(3, 100, (4, 64))})
        return make
    return [(f"{name} (2 tok)", case(name)) for name in moe_types()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("layouts", "transformers", "all"), default="all")
    args = parser.parse_args()
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _timeout)
    cases = (layouts() if args.set in ("layouts", "all") else []) + (
        transformers_families() if args.set in ("transformers", "all") else [])
    print(f"{'model':<34}{'prune':>8}{'experts':>9}{'kept':>7}{'same plan':>11}")
    counts = {"ok": 0, "copied": 0, "same": 0, "built": 0}
    for name, make in cases:
        try:
            model, few, many = make()
        except Exception:  # a family that does not build tiny: experts_transformers.py
            continue  # lists why
        row = attempt(model, few, many)
        counts["built"] += 1
        counts["ok"] += " ok " in f" {row.split()[0]} "
        counts["copied"] += "copied" in row
        counts["same"] += row.rstrip().endswith("True")
        print(f"{name:<34}{row}", flush=True)
    print(f"{counts['built']} models: {counts['ok']} prune, {counts['copied']} of them with "
          f"copied experts; the plan equals the 256-token plan on {counts['same']}")


if __name__ == "__main__":
    main()
