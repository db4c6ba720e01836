"""``convert``: run sparsified Linear/Conv2d layers with sparse kernels where, measured, it pays.

Flow: copy the model and bake its masks in → one forward pass on ``example_inputs`` with
hooks records each candidate layer's real input → for every layer, every kernel
(``prunekit.sparse.kernels``) is built, checked against the dense layer's output, and timed
next to the dense layer at each batch size → a layer goes sparse only if its best kernel is
``min_speedup`` times faster than dense at *every* batch size measured; otherwise it stays
dense, so the converted model is not slower than the dense one beyond measurement noise →
the whole model's outputs are checked against the masked dense model's, and the whole
converted model is timed against the dense one (at the example inputs, or each batch size):
if the per-layer gains do not add up to a faster model, every layer is put back dense.

The cost model is a seam: pass ``cost=`` any callable ``Candidate -> milliseconds`` (tests
force decisions with one); the default ``MeasuredCost`` times with ``benchmark_latency``.
The converted model is for inference only; ``to_dense`` turns it back into plain layers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import torch
from torch import nn

from prunekit._inputs import ExampleInputs, run_model
from prunekit.errors import ConfigError, PrunekitError, check_fraction
from prunekit.metrics.latency import benchmark_latency, num_threads
from prunekit.sparse.kernels import (
    SparseConv2d,
    SparseKernel,
    SparseLinear,
    conv_unsupported,
    get_kernel,
    kernel_names,
    to_dense_module,
)
from prunekit.sparse.masks import masked_tensors, strip

__all__ = [
    "Candidate",
    "ConversionError",
    "ConversionReport",
    "CostModel",
    "LayerDecision",
    "MeasuredCost",
    "convert",
    "to_dense",
]

DENSE = "dense"
_HOPELESS = 2.0  # times slower than dense after one round: dropped from further timing


class ConversionError(PrunekitError, RuntimeError):
    """The converted model's outputs differ from the dense model's beyond tolerance."""


@dataclass(frozen=True)
class Candidate:
    """One way to run one layer, on the input it will be timed with."""

    layer: str
    backend: str
    module: nn.Module
    #: a tensor for one layer; the example inputs (or a resized tensor) for ``"<model>"``
    inputs: ExampleInputs


class CostModel(Protocol):
    """Milliseconds one forward pass of ``candidate.module`` on ``candidate.inputs`` takes."""

    def __call__(self, candidate: Candidate) -> float: ...


Statistic = Literal["min_ms", "p10_ms", "median_ms"]


@dataclass(frozen=True)
class MeasuredCost:
    """Wall-clock time (``benchmark_latency``) over up to ``repeats`` runs after ``warmup``;
    slow candidates get fewer runs (at least 3) so one takes about ``budget_ms``.

    ``statistic`` defaults to the median, the latency a user typically sees: on a machine
    whose cores other processes share, a 2-thread sparse kernel can be bimodal (e.g. 0.3 ms
    uncontended, 8 ms when a thread is descheduled) and the median then keeps the layer
    dense. ``"p10_ms"``/``"min_ms"`` judge what a kernel can do on an idle machine instead.
    """

    warmup: int = 2
    repeats: int = 15
    budget_ms: float = 100.0
    statistic: Statistic = "median_ms"

    def __call__(self, candidate: Candidate) -> float:
        first = benchmark_latency(candidate.module, candidate.inputs, warmup=self.warmup,
                                  repeats=1).median_ms
        repeats = int(min(self.repeats, max(3, self.budget_ms // max(first, 1e-3))))
        result = benchmark_latency(candidate.module, candidate.inputs, warmup=0,
                                   repeats=repeats)
        return float(getattr(result, self.statistic))


@dataclass(frozen=True)
class LayerDecision:
    """What ``convert`` chose for one layer and why; times are per batch size, in ms."""

    name: str
    layer_type: str
    input_shape: tuple[int, ...]
    sparsity: float
    backend: str
    reason: str
    batch_sizes: tuple[int, ...] = ()
    dense_ms: tuple[float, ...] = ()
    #: backend → time at each of ``batch_sizes`` (only kernels that ran and matched)
    sparse_ms: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Smallest dense/chosen time ratio over the batch sizes (1.0 when kept dense)."""
        if self.backend == DENSE or not self.dense_ms:
            return 1.0
        return min(d / s for d, s in zip(self.dense_ms, self.sparse_ms[self.backend],
                                         strict=True))


@dataclass(frozen=True)
class ConversionReport:
    """The converted model and a decision per candidate layer."""

    model: nn.Module
    layers: tuple[LayerDecision, ...]
    min_speedup: float
    threads: int
    max_abs_error: float
    #: (dense, converted) ms of the whole model (worst batch size), None if nothing converted
    model_ms: tuple[float, float] | None = None

    @property
    def converted(self) -> list[str]:
        """Names of the layers now running a sparse kernel."""
        return [d.name for d in self.layers if d.backend != DENSE]

    def table(self) -> str:
        """A plain-text table: layer, sparsity, backend, dense vs chosen ms, speed-up, why."""
        lines = [f"{'layer':<24} {'sparsity':>8} {'backend':>8} {'dense ms':>10} "
                 f"{'sparse ms':>10} {'speedup':>8}  reason"]
        for d in self.layers:
            dense = "/".join(f"{t:.3f}" for t in d.dense_ms) or "-"
            best = min(d.sparse_ms, key=lambda k: max(d.sparse_ms[k]), default=None)
            chosen = d.backend if d.backend != DENSE else best
            sparse = "/".join(f"{t:.3f}" for t in d.sparse_ms[chosen]) if chosen else "-"
            lines.append(f"{d.name:<24} {d.sparsity:>8.1%} {d.backend:>8} {dense:>10} "
                         f"{sparse:>10} {d.speedup:>7.2f}x  {d.reason}")
        return "\n".join(lines)


def convert(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    batch_sizes: Iterable[int] | None = None,
    min_speedup: float = 1.1,
    min_sparsity: float = 0.5,
    backends: Sequence[str] | None = None,
    cost: CostModel | None = None,
    rounds: int = 2,
    threads: int | None = None,
    inplace: bool = False,
    rtol: float = 1e-5,
) -> ConversionReport:
    """Replace sparsified ``nn.Linear``/``nn.Conv2d`` layers by sparse-kernel modules where
    measured faster; return the converted model (``report.model``, in eval mode) and the
    decisions (masked layers of other types are listed too, kept dense).

    Args:
        example_inputs: one forward pass on them records each layer's input shape.
        batch_sizes: time each layer with its recorded input resized to these batch sizes
            (dim 0); None times the recorded shape only.
        min_speedup: a layer goes sparse only if dense/sparse time ≥ this at every batch size.
        min_sparsity: layers with fewer zero weights are kept dense without timing.
        backends: kernel names to try (default: every registered kernel).
        cost: ``Candidate -> ms``; default ``MeasuredCost()``. Each candidate is timed
            ``rounds`` times, interleaved, and its best time kept.
        threads: ``torch.set_num_threads`` during timing (None keeps the current count);
            decisions hold for that thread count.
        inplace: convert ``model`` itself (its masks are baked in); default works on a copy.
        rtol: outputs must match the dense masked model's within
            ``rtol * max|expected|`` (absolute), else ConversionError and nothing changes.

    The result is inference-only: sparse weights are buffers without gradients, the
    ``state_dict`` holds sparse tensors (save the masked model, or ``to_dense`` first), and
    ``copy.deepcopy`` of it fails in torch (sparse CSR/BSR storage cannot be copied that way).
    """
    options = _check_options(model, min_speedup, min_sparsity, rounds, rtol, batch_sizes)
    if isinstance(backends, str):
        raise ConfigError(
            f"backends={backends!r} must be a list of kernel names, e.g. backends=[{backends!r}]"
        )
    names = list(backends) if backends is not None else kernel_names()
    kernels = [get_kernel(name) for name in names]
    if cost is not None and not callable(cost):
        raise TypeError(
            f"cost must be a callable Candidate -> milliseconds, got {type(cost).__name__}; "
            "pass e.g. MeasuredCost(repeats=30) or leave it None"
        )
    cost_model: CostModel = MeasuredCost() if cost is None else cost

    work = strip(copy.deepcopy(model)).eval()
    no_kernel = _masked_elsewhere(model)
    with torch.no_grad():
        inputs = _record_inputs(work, example_inputs)
        expected = run_model(work, example_inputs)
    decisions: list[LayerDecision] = []
    replacements: dict[str, nn.Module] = {}
    with num_threads(threads), torch.no_grad():
        used_threads = torch.get_num_threads()
        for name, layer in work.named_modules():
            if type(layer) not in (nn.Linear, nn.Conv2d):
                if name in no_kernel:
                    decisions.append(LayerDecision(name, type(layer).__name__, (), no_kernel[name],
                                                   DENSE, "no sparse kernel for this layer type"))
                continue
            decision, module = _decide(name, layer, inputs.get(name), kernels, cost_model,
                                       options, rounds)
            decisions.append(decision)
            if module is not None:
                replacements[name] = module
    originals = {name: work.get_submodule(name) for name in replacements}
    for name, module in replacements.items():
        work.set_submodule(name, module)
    error = _check_outputs(work, example_inputs, expected, rtol)
    whole: tuple[float, float] | None = None
    if replacements:
        with num_threads(threads), torch.no_grad():
            whole = _whole_model_ms(work, originals, replacements,
                                    _model_inputs(example_inputs, options), cost_model, rounds)
        if whole[1] > whole[0]:  # per-layer wins did not add up: keep the model dense
            for name, module in originals.items():
                work.set_submodule(name, module)
            why = (f"; reverted: whole model {whole[1]:.3f} ms converted > {whole[0]:.3f} ms "
                   "dense")
            decisions = [replace(d, backend=DENSE, reason=d.reason + why)
                         if d.backend != DENSE else d for d in decisions]
            replacements = {}

    result = work
    if inplace:
        strip(model).eval()
        for name, module in replacements.items():
            model.set_submodule(name, module)
        result = model
    return ConversionReport(result, tuple(decisions), options.min_speedup, used_threads, error,
                            whole)


def to_dense(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Turn every ``SparseLinear``/``SparseConv2d`` back into ``nn.Linear``/``nn.Conv2d``."""
    if not inplace:  # torch cannot deepcopy sparse CSR/BSR tensors: share them, then drop them
        memo: dict[int, Any] = {id(b): b for b in model.buffers() if b.layout != torch.strided}
        model = copy.deepcopy(model, memo)
    target = model
    for name, module in list(target.named_modules()):
        if isinstance(module, (SparseLinear, SparseConv2d)):
            dense = to_dense_module(module)
            if name:
                target.set_submodule(name, dense)
            else:
                return dense
    return target


# --- internals ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    min_speedup: float
    min_sparsity: float
    batch_sizes: tuple[int, ...] | None


def _check_options(
    model: object, min_speedup: object, min_sparsity: object, rounds: object, rtol: object,
    batch_sizes: Iterable[int] | None,
) -> _Options:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if (isinstance(min_speedup, bool) or not isinstance(min_speedup, (int, float))
            or not math.isfinite(min_speedup) or min_speedup <= 0):
        raise ConfigError(
            f"min_speedup={min_speedup!r} must be a positive number (e.g. 1.1: sparse must "
            "be 10 % faster than dense to be chosen)"
        )
    sparsity = check_fraction("min_sparsity", min_sparsity, allow_one=True)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds={rounds!r} must be an int >= 1 (e.g. rounds=2)")
    if (isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol > 0):
        raise ConfigError(f"rtol={rtol!r} must be a positive number (e.g. rtol=1e-5)")
    sizes: tuple[int, ...] | None = None
    if batch_sizes is not None:
        sizes = tuple(batch_sizes)
        if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                            for b in sizes):
            raise ConfigError(
                f"batch_sizes={sizes!r} must be positive ints (e.g. batch_sizes=(1, 8, 64)) "
                "or None for the example inputs' own batch"
            )
    return _Options(float(min_speedup), sparsity, sizes)


def _model_inputs(example_inputs: ExampleInputs, options: _Options) -> list[ExampleInputs]:
    """Inputs to time the whole model with: the example inputs, or a lone tensor resized to
    each of ``batch_sizes``."""
    if options.batch_sizes is not None and isinstance(example_inputs, torch.Tensor):
        return [_resized(example_inputs, b) for b in options.batch_sizes]
    return [example_inputs]


def _whole_model_ms(
    work: nn.Module,
    originals: Mapping[str, nn.Module],
    replacements: Mapping[str, nn.Module],
    inputs: list[ExampleInputs],
    cost: CostModel,
    rounds: int,
) -> tuple[float, float]:
    """(dense, converted) best-of-rounds time of the whole model at the input where the
    converted model does worst relative to dense; leaves the converted layers in place."""
    worst: tuple[float, float] = (1.0, 0.0)
    for x in inputs:
        best = {DENSE: math.inf, "converted": math.inf}
        for _ in range(rounds):
            for key, modules in ((DENSE, originals), ("converted", replacements)):
                for name, module in modules.items():
                    work.set_submodule(name, module)
                best[key] = min(best[key], float(cost(Candidate("<model>", key, work, x))))
        if best["converted"] / best[DENSE] > worst[1] / worst[0]:
            worst = (best[DENSE], best["converted"])
    return worst


def _masked_elsewhere(model: nn.Module) -> dict[str, float]:
    """Module name → weight sparsity of masked modules that are not plain Linear/Conv2d."""
    out: dict[str, float] = {}
    for tensor_name, mask in masked_tensors(model).items():
        module_name = tensor_name.rpartition(".")[0]
        module = model.get_submodule(module_name)
        plain_class = type(module).__bases__[0]  # masking injected a Parametrized<Cls> type
        if plain_class not in (nn.Linear, nn.Conv2d):
            out[module_name] = max(out.get(module_name, 0.0), 1.0 - float(mask.float().mean()))
    return out


def _record_inputs(model: nn.Module, example_inputs: ExampleInputs) -> dict[str, torch.Tensor]:
    """First input tensor each Linear/Conv2d receives during one forward pass."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if type(module) in (nn.Linear, nn.Conv2d):
            def hook(_: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                if name not in seen and args and isinstance(args[0], torch.Tensor):
                    seen[name] = args[0].detach()
            handles.append(module.register_forward_pre_hook(hook))
    try:
        run_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _decide(
    name: str,
    layer: nn.Module,
    recorded: torch.Tensor | None,
    kernels: list[SparseKernel],
    cost: CostModel,
    options: _Options,
    rounds: int,
) -> tuple[LayerDecision, nn.Module | None]:
    weight = layer.get_parameter("weight").detach()
    sparsity = 1.0 - int(torch.count_nonzero(weight)) / max(weight.numel(), 1)
    shape = () if recorded is None else tuple(recorded.shape)
    dense = LayerDecision(name, type(layer).__name__, shape, sparsity, DENSE, "")
    if recorded is None:
        return replace(dense, reason="not executed on example_inputs"), None
    if sparsity < options.min_sparsity:
        return replace(dense, reason=f"sparsity below min_sparsity={options.min_sparsity:g}"), None
    if weight.device.type != "cpu" or not weight.dtype.is_floating_point:
        return replace(dense, reason=f"{weight.device.type} {weight.dtype}: CPU float only"), None
    if isinstance(layer, nn.Conv2d) and (why := conv_unsupported(layer)) is not None:
        return replace(dense, reason=why), None

    modules: dict[str, nn.Module] = {DENSE: layer}
    skipped: list[str] = []
    matrix = weight.reshape(weight.shape[0], -1)
    for kernel in kernels:
        why = kernel.unsupported(matrix)
        if why is None:
            module = _build(layer, kernel)
            why = _mismatch(layer, module, recorded)
            if why is None:
                modules[kernel.name] = module
                continue
        skipped.append(f"{kernel.name}: {why}")

    batches = options.batch_sizes or (shape[0] if recorded.dim() > 1 else 1,)
    times = _time(name, modules, [_resized(recorded, b) for b in batches], cost, rounds)
    dense_ms = times.pop(DENSE)
    timed = replace(dense, batch_sizes=tuple(batches), dense_ms=dense_ms, sparse_ms=times)
    if not times:
        skipped.append(f"the others >= {_HOPELESS:g}x slower than dense")
        return replace(timed, reason="no kernel pays (" + "; ".join(skipped) + ")"), None

    def worst_ratio(key: str) -> float:  # dense/sparse at the batch size where sparse gains least
        return min(d / s for d, s in zip(dense_ms, times[key], strict=True))

    chosen = max(times, key=worst_ratio)
    worst = worst_ratio(chosen)
    if worst < options.min_speedup:
        why = f"best kernel {chosen} only {worst:.2f}x < min_speedup {options.min_speedup:g}"
        return replace(timed, reason=why), None
    why = f"{worst:.2f}x >= min_speedup {options.min_speedup:g}"
    return replace(timed, backend=chosen, reason=why), modules[chosen]


def _time(
    name: str, modules: Mapping[str, nn.Module], inputs: list[torch.Tensor], cost: CostModel,
    rounds: int,
) -> dict[str, tuple[float, ...]]:
    """Backend → best-of-``rounds`` time at each input; rounds interleave the candidates so
    that drift on a shared machine hits them all alike."""
    times: dict[str, list[float]] = {key: [] for key in modules}
    alive = dict(modules)
    for x in inputs:
        best = {key: math.inf for key in alive}
        for round_ in range(rounds):
            for key, module in alive.items():
                best[key] = min(best[key], float(cost(Candidate(name, key, module, x))))
            if round_ == 0:  # a kernel 2x slower than dense cannot win: stop timing it
                alive = {k: m for k, m in alive.items()
                         if k == DENSE or best[k] <= _HOPELESS * best[DENSE]}
        for key in alive:
            times[key].append(best[key])
    return {key: tuple(value) for key, value in times.items() if key in alive}


def _build(layer: nn.Module, kernel: SparseKernel) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return SparseLinear(layer, kernel)
    assert isinstance(layer, nn.Conv2d)  # only Linear/Conv2d reach here (internal invariant)
    return SparseConv2d(layer, kernel)


def _resized(recorded: torch.Tensor, batch: int) -> torch.Tensor:
    """``recorded`` with dim 0 resized to ``batch`` (random values; timing ignores them)."""
    if recorded.dim() > 1 and recorded.shape[0] == batch:
        return recorded
    if recorded.dim() <= 1:
        shape: tuple[int, ...] = (batch, *recorded.shape)
    else:
        shape = (batch, *recorded.shape[1:])
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen, dtype=recorded.dtype).to(recorded.device)


def _mismatch(dense: nn.Module, sparse: nn.Module, x: torch.Tensor) -> str | None:
    want = dense(x)
    got = sparse(x)
    scale = float(want.abs().max()) if want.numel() else 0.0
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-5,
                                                     atol=1e-5 * max(scale, 1e-30)):
        return "its output differs from the dense layer's"
    return None


def _check_outputs(
    model: nn.Module, example_inputs: ExampleInputs, expected: Any, rtol: float
) -> float:
    with torch.no_grad():
        got = run_model(model, example_inputs)
    pairs = list(zip(_tensors(got), _tensors(expected), strict=True))
    worst = 0.0
    for g, e in pairs:
        diff = float((g - e).abs().max()) if e.numel() else 0.0
        scale = float(e.abs().max()) if e.numel() else 0.0
        if g.shape != e.shape or diff > rtol * scale:
            raise ConversionError(
                f"the converted model's output differs from the dense model's by {diff:.3g} "
                f"(> rtol={rtol:g} x max|output| {scale:.3g}); nothing was converted — "
                "report this, or pass backends=[...] without the failing kernel"
            )
        worst = max(worst, diff)
    return worst


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []
