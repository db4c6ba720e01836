"""Deploying sparse models: bytes on disk, CPU latency dense vs converted, ONNX Runtime, 2:4 GPU.

Run from the repository root (about 3-5 minutes on 2 cores):

    .venv/bin/python benchmarks/sparse.py
    .venv/bin/python benchmarks/sparse.py --quick          # fewer cells, ~1 minute

Tables (markdown):
1. bytes on disk of ``prunekit.save(model, dir)`` (dense) vs ``save(..., sparse=True)``
   (bitmap + fp32 values, bit-exact) and ``value_dtype="float16"`` (lossy), as a fraction of
   the dense fp32 parameter bytes, for LeNet-5 and an MLP 4096-4096-4096-10 (random init,
   global magnitude ``sparsify``).
2. CPU latency (best of 2 alternating medians of ``benchmark_latency``) of the MLP with
   masks baked in (``strip``: plain dense kernels, the fair baseline) vs
   ``prunekit.sparse.convert.convert(model, x, threads=t)`` for batch 1/8/64, 1 and 2
   threads; ``ratio`` = dense / converted medians, ``ratio of p10s`` the same for the 10th
   percentiles (closer to an idle machine); ``layers`` = the backend chosen per layer.
   The converter measures at conversion time on the same batch, so a layer it keeps dense
   costs what dense costs.
3. ONNX Runtime (CPUExecutionProvider) latency of the exported dense and 90 % models next
   to PyTorch's: ORT's dense kernels do not exploit zeros, so the two are alike.
4. Only with a CUDA GPU: fp16 MLP dense vs ``to_semi_structured`` (2:4), batch 64/512.
Dense and sparse are timed side by side in one process; on a shared machine read ratios.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prunekit.io.checkpoint import save
from prunekit.io.onnx import export_onnx
from prunekit.metrics.latency import LatencyResult, benchmark_latency
from prunekit.sparse.convert import MeasuredCost, convert
from prunekit.sparse.masks import strip
from prunekit.sparse.sparsify import sparsify
from prunekit.zoo import LeNet5


def _mlp4096() -> nn.Module:
    return nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                         nn.Linear(4096, 10)).eval()


def _weights_bytes(directory: Path) -> int:
    return (directory / "model.safetensors").stat().st_size


def bytes_table(sparsities: list[float]) -> None:
    print("\n## Bytes on disk (model.safetensors) / dense fp32 parameter bytes\n")
    print("| model | sparsity | dense file | sparse fp32 | ratio | sparse fp16 values | ratio |")
    print("|---|---|---|---|---|---|---|")
    models: dict[str, Callable[[], nn.Module]] = {"LeNet-5": lambda: LeNet5().eval(),
                                                  "MLP 4096x2+10": _mlp4096}
    with tempfile.TemporaryDirectory() as tmp:
        for label, factory in models.items():
            torch.manual_seed(0)
            base = factory()
            dense_params = sum(p.numel() * 4 for p in base.parameters())
            dense_file = _weights_bytes(save(base, Path(tmp) / "dense"))
            for sparsity in sparsities:
                model = copy.deepcopy(base)
                sparsify(model, sparsity)
                fp32 = _weights_bytes(save(model, Path(tmp) / "s32", sparse=True))
                fp16 = _weights_bytes(save(model, Path(tmp) / "s16", sparse=True,
                                           value_dtype="float16"))
                print(f"| {label} | {sparsity:.0%} | {dense_file:,} | {fp32:,} | "
                      f"{fp32 / dense_params:.3f}x | {fp16:,} | {fp16 / dense_params:.3f}x |")


def latency_table(sparsities: list[float], batches: list[int], threads: list[int],
                  repeats: int) -> None:
    print("\n## CPU latency, MLP 4096-4096-4096-10: dense (masks baked in) vs convert() "
          "(median ms)\n")
    print("| threads | sparsity | batch | dense ms | converted ms | ratio | ratio of p10s "
          "| layers |")
    print("|---|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    base = _mlp4096()
    cost = MeasuredCost()
    for sparsity in sparsities:
        model = copy.deepcopy(base)
        sparsify(model, sparsity)
        dense = strip(copy.deepcopy(model))  # plain dense kernels on the same (zeroed) weights
        for n_threads in threads:
            for batch in batches:
                x = torch.randn(batch, 4096)
                report = convert(model, x, cost=cost, threads=n_threads)
                d, s = _paired(dense, report.model, x, n_threads, repeats)
                layers = "/".join(d.backend for d in report.layers)
                print(f"| {n_threads} | {sparsity:.0%} | {batch} | {d.median_ms:.3f} | "
                      f"{s.median_ms:.3f} | {d.median_ms / s.median_ms:.2f}x | "
                      f"{d.p10_ms / s.p10_ms:.2f}x | {layers} |", flush=True)


def _paired(
    a: nn.Module, b: nn.Module, x: torch.Tensor, threads: int, repeats: int, pairs: int = 2
) -> tuple[LatencyResult, LatencyResult]:
    """The run with the best median of each model over ``pairs`` alternating runs (drift on
    a shared machine hits both alike)."""
    runs_a, runs_b = [], []
    for _ in range(pairs):
        runs_a.append(benchmark_latency(a, x, warmup=2, repeats=repeats, threads=threads))
        runs_b.append(benchmark_latency(b, x, warmup=2, repeats=repeats, threads=threads))
    return (min(runs_a, key=lambda r: r.median_ms), min(runs_b, key=lambda r: r.median_ms))


def _ort_median_ms(path: Path, x: torch.Tensor, threads: int, repeats: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(times)


def onnx_table(batches: list[int], repeats: int) -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        print("\n(onnxruntime not installed: ONNX table skipped)")
        return
    print("\n## ONNX Runtime vs PyTorch, MLP 4096-4096-4096-10, 1 thread (median ms)\n")
    print("| model | batch | PyTorch dense kernels | PyTorch convert() | ONNX Runtime |")
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    base = _mlp4096()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, sparsity in (("dense", 0.0), ("90 % sparse", 0.9)):
            model = copy.deepcopy(base)
            if sparsity:
                sparsify(model, sparsity)
            for batch in batches:
                x = torch.randn(batch, 4096)
                path = Path(tmp) / f"{sparsity}-{batch}.onnx"  # exported graphs fix the batch
                export_onnx(model, x, path, exporter="torchscript", check=True)
                plain = strip(copy.deepcopy(model))
                converted = "-"
                if sparsity:
                    report = convert(model, x, cost=MeasuredCost(),
                                     threads=1)
                    plain_run, converted_run = _paired(plain, report.model, x, 1, repeats)
                    torch_ms = plain_run.median_ms
                    converted = f"{converted_run.median_ms:.3f}"
                else:
                    torch_ms = _paired(plain, plain, x, 1, repeats, pairs=1)[0].median_ms
                ort_ms = _ort_median_ms(path, x, 1, repeats)
                print(f"| {label} | {batch} | {torch_ms:.3f} | {converted} | {ort_ms:.3f} |",
                      flush=True)
                path.unlink()


def gpu_table(repeats: int) -> None:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        print("\n(no CUDA GPU with compute capability >= 8.0: 2:4 table skipped)")
        return
    from prunekit.sparse.semi_structured import to_semi_structured

    print(f"\n## 2:4 semi-structured on {torch.cuda.get_device_name()}, fp16 MLP "
          "4096-4096-4096-10 (median ms)\n")
    print("| batch | dense fp16 | 2:4 semi-structured | ratio |")
    print("|---|---|---|---|")
    torch.manual_seed(0)
    model = _mlp4096()
    sparsify(model, pattern="2:4")
    dense = strip(copy.deepcopy(model)).half().cuda()
    sparse = to_semi_structured(model.cuda(), dtype=torch.float16).model
    for batch in (64, 512, 4096):
        x = torch.randn(batch, 4096, device="cuda", dtype=torch.float16)
        d = benchmark_latency(dense, x, warmup=10, repeats=repeats).median_ms
        s = benchmark_latency(sparse, x, warmup=10, repeats=repeats).median_ms
        print(f"| {batch} | {d:.3f} | {s:.3f} | {d / s:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cells (smoke run)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    quick = args.quick
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    bytes_table([0.9] if quick else [0.5, 0.8, 0.9, 0.95])
    latency_table([0.9] if quick else [0.7, 0.9, 0.95], [1] if quick else [1, 8, 64],
                  [1] if quick else [1, 2], args.repeats)
    onnx_table([1] if quick else [1, 64], args.repeats)
    gpu_table(args.repeats)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (above the CPU count, other "
          "processes shared the cores and multi-thread timings are unreliable)")


if __name__ == "__main__":
    main()
