"""Wall-clock latency of a forward pass: warm-up, then repeated timed runs and their spread.

Numbers from one process on a shared machine are noisy; compare models side by side in one
run (see ``benchmarks/``) and read the median and the p10–p90 spread, not a single mean.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from prunekit._buffers import preserved_buffers
from prunekit._inputs import ExampleInputs, model_device, move_inputs, run_model
from prunekit.errors import ConfigError

__all__ = ["LatencyResult", "benchmark_latency", "num_threads"]


@dataclass(frozen=True)
class LatencyResult:
    """Per-forward-pass latency statistics in milliseconds over ``repeats`` timed runs."""

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    repeats: int
    warmup: int
    threads: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


def benchmark_latency(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    warmup: int = 10,
    repeats: int = 50,
    threads: int | None = None,
) -> LatencyResult:
    """Time ``model`` on ``example_inputs`` under ``torch.no_grad()`` in its current mode.

    ``warmup`` untimed runs come first (allocator, caches, lazy init). Each timed run is
    measured with ``time.perf_counter_ns``; on CUDA the device is synchronised before and
    after it so the time covers the kernels, not just their launch. ``threads`` sets
    ``torch.set_num_threads`` for the benchmark only (None keeps the current setting).
    Buffers the runs update (BatchNorm statistics in training mode) are restored after;
    time a model in the mode it will be deployed in, usually ``eval()``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "pass the network itself (for a pruning result, pass result.model)"
        )
    _check_int("warmup", warmup, minimum=0, example="warmup=10")
    _check_int("repeats", repeats, minimum=1, example="repeats=50")
    if threads is not None:
        _check_int("threads", threads, minimum=1, example="threads=1, or None to keep the current")

    device = model_device(model)
    inputs = move_inputs(example_inputs, device)
    sync = _synchronizer(device)
    times_ms: list[float] = []
    with num_threads(threads), preserved_buffers(model), torch.no_grad():
        used_threads = torch.get_num_threads()
        for _ in range(warmup):
            run_model(model, inputs)
        sync()
        for _ in range(repeats):
            start = time.perf_counter_ns()
            run_model(model, inputs)
            sync()
            times_ms.append((time.perf_counter_ns() - start) / 1e6)
    return _summarise(times_ms, warmup=warmup, threads=used_threads, device=str(device))


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Set ``torch.set_num_threads(threads)`` inside the block, restoring the old count after."""
    if threads is None:
        yield
        return
    _check_int("threads", threads, minimum=1, example="threads=1")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _synchronizer(device: torch.device) -> Callable[[], None]:
    """Wait for queued CUDA kernels; a no-op on CPU, where calls already block."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _summarise(times_ms: list[float], *, warmup: int, threads: int, device: str) -> LatencyResult:
    ordered = sorted(times_ms)
    return LatencyResult(
        median_ms=statistics.median(ordered),
        mean_ms=statistics.fmean(ordered),
        std_ms=statistics.pstdev(ordered),
        min_ms=ordered[0],
        max_ms=ordered[-1],
        p10_ms=_percentile(ordered, 10),
        p90_ms=_percentile(ordered, 90),
        iqr_ms=_percentile(ordered, 75) - _percentile(ordered, 25),
        repeats=len(ordered),
        warmup=warmup,
        threads=threads,
        device=device,
    )


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an already sorted list."""
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _check_int(name: str, value: object, *, minimum: int, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ConfigError(
            f"{name}={value!r} is out of range; it must be >= {minimum} (e.g. {example})"
        )
    return value
