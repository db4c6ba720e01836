"""Global magnitude pruning: prunekit.sparsify vs torch.nn.utils.prune.global_unstructured.

Run from the repository root:

    .venv/bin/python benchmarks/unstructured.py            # full run, 1 intra-op thread
    .venv/bin/python benchmarks/unstructured.py --repeats 3 --quick --threads 2

For each model and sparsity both libraries prune a fresh copy of the same weights (the
copy is made outside the timed region); the table shows whether the masks are identical,
the median wall time of each over the repeats (after one untimed warm-up run), and
prunekit's time / torch's time. One thread by default: on a shared machine, multi-threaded
timings swing by 10x and bury the comparison.
Both attach a lasting mask (a parametrization / a forward pre-hook) to every weight.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from prunekit.sparse.masks import masked_tensors
from prunekit.sparse.sparsify import sparsify
from prunekit.zoo import LeNet5

PRUNABLE = (nn.Linear, nn.Conv2d)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 2048),
                         nn.ReLU(), nn.Linear(2048, 10))


def _cnn() -> nn.Module:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 64), *block(64, 128), *block(128, 256), *block(256, 512),
                         nn.Flatten(), nn.Linear(512 * 2 * 2, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


MODELS: dict[str, Callable[[], nn.Module]] = {"LeNet-5": LeNet5, "MLP 784-2048-2048-10": _mlp,
                                              "CNN 4 conv + 2 fc": _cnn}


def _torch_prune(model: nn.Module, amount: float) -> dict[str, torch.Tensor]:
    params = [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured,
                                    amount=amount)
    return {f"{n}.weight": m.weight_mask.bool() for n, m in model.named_modules()
            if hasattr(m, "weight_mask")}


def _prunekit(model: nn.Module, amount: float) -> dict[str, torch.Tensor]:
    sparsify(model, amount, layers=PRUNABLE)
    return masked_tensors(model)


def _time(fn: Callable[[nn.Module, float], dict[str, torch.Tensor]], base: nn.Module,
          amount: float, repeats: int) -> tuple[float, dict[str, torch.Tensor]]:
    times, masks = [], fn(copy.deepcopy(base), amount)  # warm-up
    for _ in range(repeats):
        model = copy.deepcopy(base)
        start = time.perf_counter()
        masks = fn(model, amount)
        times.append(time.perf_counter() - start)
    return statistics.median(times), masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="LeNet-5 and the MLP only")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sparsities = (0.5, 0.8, 0.9, 0.95, 0.99)
    names = list(MODELS)[:2] if args.quick else list(MODELS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} repeats")
    header = (f"{'model':<22} {'weights':>10} {'sparsity':>8} {'tie@cut':>7} {'identical':>9} "
              f"{'prunekit ms':>11} {'torch ms':>9} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    all_identical = True
    for name in names:
        torch.manual_seed(0)
        base = MODELS[name]().eval()
        flat = torch.cat([m.weight.detach().abs().flatten() for m in base.modules()
                          if isinstance(m, PRUNABLE)])
        n = flat.numel()
        for amount in sparsities:
            k = round(amount * n)
            # equal magnitudes straddle the cut: prunekit then breaks the tie with torch.topk
            tie = 0 < k < n and bool(torch.kthvalue(flat, k).values
                                     == torch.kthvalue(flat, k + 1).values)
            t_ours, ours = _time(_prunekit, base, amount, args.repeats)
            t_torch, theirs = _time(_torch_prune, base, amount, args.repeats)
            identical = list(ours) == list(theirs) and all(
                torch.equal(ours[k], theirs[k]) for k in ours)
            all_identical &= identical
            print(f"{name:<22} {n:>10,} {amount:>8.2f} {'yes' if tie else 'no':>7} "
                  f"{'yes' if identical else 'NO':>9} "
                  f"{1e3 * t_ours:>11.2f} {1e3 * t_torch:>9.2f} {t_ours / t_torch:>6.2f}")
    print("ratio = prunekit time / torch time (lower is faster); tie@cut: equal magnitudes "
          "straddle the cut, so prunekit runs torch.topk to break the tie as torch does;",
          "all masks identical" if all_identical else "SOME MASKS DIFFER")


if __name__ == "__main__":
    main()
