"""Does measured CPU latency fall as MACs do, on realistic CNNs pruned by ``pk.prune``?

ResNet-18, ResNet-50 (bottleneck), VGG-16-BN and MobileNetV2, written in plain torch with
torchvision's layouts (torchvision is not a dependency), at 224×224 by default. Each is
pruned with L2 filter norms at 30 % and 50 % of the channels of every group, with
``round_to=8`` and without; the classifier (the output layer) is kept. For every batch
size and thread count, the dense model and its pruned variants are timed *round-robin*
(dense, p30, p50, ... then again), so load from other processes on a shared machine hits
all of them alike; each round gives a paired speed-up (dense time / pruned time) and the
figure reported is the median over the rounds.

Every configuration is timed twice over, in the same round-robin: dense and pruned as-is,
and dense and pruned both BN-folded (``fold_batchnorm``, the deploy-time step, applied to
both sides alike; folding changes no counted MAC).

Columns: ``prune s`` (the ``pk.prune`` call on a batch of 1 with one thread, profiles
excluded), MACs reduction (dense MACs / pruned MACs, both from ``pk.profile`` on the same
input: FlopCounterMode counts conv/linear/matmul MACs only), then per batch/threads the
measured latency speed-up (median of the paired per-round ratios) and its ratio to the MACs
reduction, as-is | folded — 1.0 means latency falls exactly as MACs do; the goal is ≥ 0.9.
Latency is measured with ``torch.no_grad()`` in eval mode, one thread count at a time
(``torch.set_num_threads``). The summary counts the configurations that reach 0.9.

Command (about 25 minutes on 2 shared cores at the defaults):

    PYTHONPATH=src .venv/bin/python benchmarks/structured_latency.py [--size 224]
        [--batches 1,8] [--threads 1,2] [--rounds 7] [--variants 0.3/8,0.5/8,0.3/-,0.5/-]
        [--models resnet18,resnet50,vgg16_bn,mobilenet_v2] [--channels-last] [--breakdown]
        [--traffic]

``--channels-last`` runs every model and input in ``torch.channels_last`` (both sides);
``--breakdown`` skips the round-robin and prints, per model, the time of one forward pass
split into conv/linear and the rest, with conv GMAC/s by output-width class (%16/%8/other).
``--traffic`` skips the timing and prints, per variant, the MACs reduction beside the
reduction of memory traffic (bytes of every tensor each op reads and writes, weights
included; views are free): a memory-bound layer's time follows its traffic, which falls
linearly with the channels kept while its MACs fall with their square.
Results and their reading: benchmarks/results/structured.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from prunekit.metrics.profile import profile
from prunekit.structured.fold import fold_batchnorm
from prunekit.structured.pruning import prune

# -- the models (torchvision's layouts, random weights) ---------------------------------------


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             relu: type[nn.Module] | None = nn.ReLU) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(cout)]
    if relu is not None:
        layers.append(relu(inplace=True))
    return layers


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(*_conv_bn(cin, width, 3, stride),
                                  *_conv_bn(width, cout, 3, relu=None))
        self.short = (nn.Sequential(*_conv_bn(cin, cout, 1, stride, relu=None))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.short(x))


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        nn.Module.__init__(self)
        cout = width * self.expansion
        self.body = nn.Sequential(*_conv_bn(cin, width, 1), *_conv_bn(width, width, 3, stride),
                                  *_conv_bn(width, cout, 1, relu=None))
        self.short = (nn.Sequential(*_conv_bn(cin, cout, 1, stride, relu=None))
                      if stride != 1 or cin != cout else nn.Identity())


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock], depths: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        cin = 64
        for stage, depth in enumerate(depths):
            width = 64 * 2 ** stage
            for i in range(depth):
                blocks.append(block(cin, width, 2 if i == 0 and stage > 0 else 1))
                cin = width * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 1000)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class VGG16BN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        cfg = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0]
        layers: list[nn.Module] = []
        cin = 3
        for c in cfg:
            if c == 0:
                layers.append(nn.MaxPool2d(2))
            else:
                layers += _conv_bn(cin, c, 3)
                cin = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else _conv_bn(cin, hidden, 1, relu=nn.ReLU6)
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden, relu=nn.ReLU6)
        layers += _conv_bn(hidden, cout, 1, relu=None)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1)]
        layers: list[nn.Module] = _conv_bn(3, 32, 3, 2, relu=nn.ReLU6)
        cin = 32
        for t, c, n, s in cfg:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += _conv_bn(cin, 1280, 1, relu=nn.ReLU6)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], nn.Module]]] = {
    "resnet18": (lambda: ResNet(BasicBlock, (2, 2, 2, 2)), lambda m: m.fc),
    "resnet50": (lambda: ResNet(Bottleneck, (3, 4, 6, 3)), lambda m: m.fc),
    "vgg16_bn": (VGG16BN, lambda m: m.classifier[-1]),
    "mobilenet_v2": (MobileNetV2, lambda m: m.classifier[-1]),
}
VARIANTS = [(0.3, 8), (0.5, 8), (0.3, None), (0.5, None)]  # (channel ratio, round_to)

# -- measuring --------------------------------------------------------------------------------


def _time_once(model: nn.Module, x: Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def interleaved_times(models: list[nn.Module], x: Tensor, rounds: int,
                      warmup: int = 2) -> list[list[float]]:
    """Per model, its time in each round; in every round the models run one after another,
    so load from other processes hits all of them alike."""
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for model in models:
            for _ in range(warmup):
                model(x)
        for _ in range(rounds):
            for i, model in enumerate(models):
                times[i].append(_time_once(model, x))
    return times


def paired_speedup(base: list[float], own: list[float]) -> float:
    """Median over the rounds of ``base / own`` (paired ratios cancel shared load)."""
    return statistics.median(b / t for b, t in zip(base, own, strict=True))


def _conv_macs(module: nn.Module, out: Tensor) -> int:
    weight = module.weight  # (out, in / groups, *k): each output element costs in/g * k MACs
    return out.numel() * weight[0].numel() if isinstance(weight, Tensor) else 0


Breakdown = tuple[float, float, int, dict[str, tuple[float, int]]]


class _ConvTimer:
    """Forward hooks that add up the time and MACs of every conv and linear call, keyed by
    the output width's class ('%16', '%8', 'other')."""

    def __init__(self) -> None:
        self.spent: dict[str, list[float]] = {}
        self.starts: dict[int, float] = {}

    def pre(self, module: nn.Module, args: object) -> None:
        self.starts[id(module)] = time.perf_counter()

    def post(self, module: nn.Module, args: object, out: Tensor) -> None:
        seconds = time.perf_counter() - self.starts[id(module)]
        width = out.shape[1] if out.dim() > 1 else out.shape[-1]
        key = "%16" if width % 16 == 0 else "%8" if width % 8 == 0 else "other"
        entry = self.spent.setdefault(key, [0.0, 0])
        entry[0] += seconds
        entry[1] += _conv_macs(module, out)


def breakdown(model: nn.Module, x: Tensor, repeats: int = 3) -> Breakdown:
    """Where one forward pass spends its time: (total s, conv/linear s, their MACs, per
    output-width class: (s, MACs)); hooks around every conv and linear, best of ``repeats``
    passes (with one thread the calls are synchronous)."""
    best: Breakdown | None = None
    for _ in range(repeats):
        timer = _ConvTimer()
        handles = []
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                handles += [module.register_forward_pre_hook(timer.pre),
                            module.register_forward_hook(timer.post)]
        with torch.no_grad():
            start = time.perf_counter()
            model(x)
            total = time.perf_counter() - start
        for handle in handles:
            handle.remove()
        per = {k: (v[0], int(v[1])) for k, v in timer.spent.items()}
        if best is None or total < best[0]:
            best = (total, sum(v[0] for v in per.values()), sum(v[1] for v in per.values()), per)
    if best is None:
        raise ValueError(f"repeats={repeats} must be at least 1")
    return best


def print_breakdown(name: str, labels: list[str], models: list[nn.Module], x: Tensor) -> None:
    print(f"{name}: per forward, batch {x.shape[0]}, {torch.get_num_threads()} thread(s); "
          "conv+linear GMAC/s by output width (%16 / %8 / other)")
    for label, model in zip(labels, models, strict=True):
        total, conv_s, macs, per = breakdown(model, x)
        rates = " ".join(f"{k}:{v[1] / v[0] / 1e9:.0f}({v[1] / max(1, macs):.0%})"
                         for k, v in sorted(per.items()) if v[0] > 0)
        print(f"  {label:<16} total {total * 1e3:8.1f} ms  conv/linear {conv_s * 1e3:8.1f} ms "
              f"({conv_s / total:.0%})  other {(total - conv_s) * 1e3:7.1f} ms  "
              f"{macs / conv_s / 1e9:6.1f} GMAC/s  [{rates}]", flush=True)


class _TrafficCounter(TorchFunctionMode):
    """Adds up the bytes of every tensor each torch call reads and writes (one pass, batch
    of the caller's input); calls that return a view move nothing and are skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_function__(self, func: object, types: object, args: tuple = (),
                           kwargs: dict | None = None) -> object:
        out = func(*args, **(kwargs or {}))  # type: ignore[operator]
        outs = [t for t in (out if isinstance(out, (tuple, list)) else (out,))
                if isinstance(t, Tensor)]
        if outs and all(t._base is None for t in outs):
            moved = [*(a for a in args if isinstance(a, Tensor)),
                     *(v for v in (kwargs or {}).values() if isinstance(v, Tensor)), *outs]
            self.bytes += sum(t.numel() * t.element_size() for t in moved)
        return out


def traffic(model: nn.Module, x: Tensor) -> int:
    """Bytes read and written by one forward pass of ``model`` on ``x`` (see _TrafficCounter)."""
    counter = _TrafficCounter()
    with torch.no_grad(), counter:
        model(x)
    return counter.bytes


def _variants(text: str) -> list[tuple[float, int | None]]:
    out: list[tuple[float, int | None]] = []
    for item in text.split(","):
        ratio, _, round_to = item.partition("/")
        out.append((float(ratio), None if round_to in ("", "-") else int(round_to)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input height = width")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--variants", default="0.3/8,0.5/8,0.3/-,0.5/-",
                        help="channel ratio / round_to ('-' for none), comma-separated")
    parser.add_argument("--channels-last", action="store_true",
                        help="run every model (dense and pruned, as-is and folded) and input "
                             "in torch.channels_last memory format")
    parser.add_argument("--traffic", action="store_true",
                        help="instead of timing, print MACs and memory-traffic reductions")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead of the round-robin, print where each model's forward "
                             "spends its time (conv/linear vs the rest, GMAC/s by width)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    variants = _variants(args.variants)
    print(f"input {args.size}x{args.size}"
          f"{' channels_last' if args.channels_last else ''}; {args.rounds} interleaved rounds; "
          f"variants: channel ratio / round_to; cells: as-is | BN-folded")
    header = (f"{'model':<14}{'variant':>9}{'prune s':>8}{'MACs red':>9}"
              + "".join(f"{f'b{b} t{t} sp/r as-is | folded':>30}"
                        for b in batches for t in threads))
    if not args.traffic:
        print(header)
        print("-" * len(header))
    ratios: dict[str, list[tuple[str, float]]] = {"as-is": [], "folded": []}
    torch.set_num_threads(1)
    warm = MobileNetV2().eval()  # first call pays one-off imports: keep them out of "prune s"
    _ = prune(warm, torch.randn(1, 3, 32, 32), ratio=0.5, ignore=[warm.classifier[-1]]).model
    for name in args.models.split(","):
        build, head = MODELS[name]
        torch.manual_seed(0)
        dense = build().eval()
        one = torch.randn(1, 3, args.size, args.size)
        dense_macs = profile(dense, one).macs
        pruned, rows, macs = [], [], [dense_macs]
        torch.set_num_threads(1)  # prune on one thread: small ops + a busy pool = spin waits
        for ratio, round_to in variants:
            start = time.perf_counter()
            result = prune(dense, one, ratio=ratio, importance="l2", ignore=[head(dense)],
                           round_to=round_to)
            seconds = time.perf_counter() - start  # the profiles are measured below
            model = result.model.eval()
            pruned.append(model)
            # both counts by the same pk.profile on the same input (FlopCounterMode: conv,
            # linear and matmul MACs; BN, activations, pooling and adds count zero)
            macs.append(profile(model, one).macs)
            rows.append((f"{ratio:.0%}/{round_to or '-'}", seconds, dense_macs / max(1, macs[-1])))
        if args.traffic:
            x = torch.randn(batches[0], 3, args.size, args.size)
            dense_bytes = traffic(fold_batchnorm(dense, one), x)
            for (variant, _, reduction), model in zip(rows, pruned, strict=True):
                moved = traffic(fold_batchnorm(model, one), x)
                print(f"{name:<14}{variant:>9}  MACs reduction {reduction:5.2f}x  traffic "
                      f"reduction {dense_bytes / moved:5.2f}x (BN-folded, batch {batches[0]}: "
                      f"{dense_bytes / 2**20:.0f} -> {moved / 2**20:.0f} MiB)", flush=True)
            continue
        # the deploy-time step, applied alike to the dense model and to every pruned one
        folded = [fold_batchnorm(m, one) for m in (dense, *pruned)]
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        timed = [m.to(memory_format=fmt) for m in (dense, *pruned, *folded)]
        if args.breakdown:
            torch.set_num_threads(threads[0])
            labels = ["dense", *(r[0] for r in rows)]
            print_breakdown(name, [*labels, *(f"{lab} folded" for lab in labels)],
                            timed, torch.randn(batches[0], 3, args.size, args.size).to(
                                memory_format=fmt))
            continue
        if [profile(m, one).macs for m in folded] != macs:
            raise RuntimeError("folding changed the counted MACs; the ratios would not compare")
        cells: list[list[str]] = [[] for _ in rows]
        for batch in batches:
            x = torch.randn(batch, 3, args.size, args.size).to(memory_format=fmt)
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                times = interleaved_times(timed, x, args.rounds)
                as_is, fold_times = times[:len(rows) + 1], times[len(rows) + 1:]
                for i, (variant, _, reduction) in enumerate(rows):
                    label = f"{name} {variant} b{batch} t{n_threads}"
                    cell = []
                    for mode, series in (("as-is", as_is), ("folded", fold_times)):
                        speedup = paired_speedup(series[0], series[i + 1])
                        ratios[mode].append((label, speedup / reduction))
                        cell.append(f"{speedup:.2f}x/{speedup / reduction:.2f}")
                    cells[i].append(" | ".join(cell))
        for (variant, seconds, reduction), row in zip(rows, cells, strict=True):
            print(f"{name:<14}{variant:>9}{seconds:>8.2f}{reduction:>8.2f}x"
                  + "".join(f"{c:>30}" for c in row), flush=True)
    if args.breakdown or args.traffic:
        return
    print("-" * len(header))
    print("cells: measured speed-up / (speed-up ÷ MACs reduction), dense and pruned both as-is "
          "| both BN-folded; goal ratio >= 0.9")
    for mode, found in ratios.items():
        met = [label for label, r in found if r >= 0.9]
        print(f"{mode:>7}: {len(met)}/{len(found)} configurations reach 0.9; ratio median "
              f"{statistics.median(r for _, r in found):.2f}, min "
              f"{min(r for _, r in found):.2f} ({min(found, key=lambda p: p[1])[0]})")
        for batch in batches:
            for n_threads in threads:
                tag = f" b{batch} t{n_threads}"
                column = [r for label, r in found if label.endswith(tag)]
                print(f"{'':>9}b{batch} t{n_threads}: {sum(r >= 0.9 for r in column)}/"
                      f"{len(column)} reach 0.9, median {statistics.median(column):.2f}")


if __name__ == "__main__":
    main()
