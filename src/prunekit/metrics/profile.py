"""What a model costs: parameters, non-zeros, MACs, bytes — in total and per layer.

MACs come from PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` (MACs =
FLOPs / 2), so every op it knows (conv, linear, matmul, bmm, attention) is counted with
PyTorch's formulas and no layer table is kept here. FlopCounterMode counts only the
multiply-accumulates of those ops: bias adds, activations, pooling, normalisation and
element-wise ops count zero.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from rich.table import Table
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from prunekit._buffers import preserved_buffers
from prunekit._inputs import ExampleInputs, grad_mode, model_device, move_inputs, run_model
from prunekit._warn import warn
from prunekit.metrics.compare import ProfileDiff, compare
from prunekit.sparse.compressed import compressed_nbytes

__all__ = ["LayerProfile", "Profile", "count_params", "profile"]


@dataclass(frozen=True)
class LayerProfile:
    """One module's own parameters and MACs (children excluded).

    ``macs`` are the MACs of ops run directly by this module; ``sparse_macs`` scales them
    by the density of the module's own weight matrices (tensors with ≥ 2 dimensions), the
    count a kernel that skipped zero weights would do. ``output_shape`` is the shape of the
    first tensor in the module's output on its first call; ``calls`` counts the calls.
    """

    name: str
    type: str
    params: int
    nonzeros: int
    macs: int
    sparse_macs: int
    output_shape: tuple[int, ...] | None
    calls: int

    @property
    def sparsity(self) -> float:
        """Fraction of this module's own parameters that are exactly zero."""
        return 0.0 if self.params == 0 else 1.0 - self.nonzeros / self.params


@dataclass(frozen=True)
class Profile:
    """Size and compute of a model for one set of example inputs.

    Parameter counts and byte sizes cover parameters only (not buffers such as BatchNorm
    running statistics or masks). A masked tensor counts once, at its effective value
    ``original * mask``; a parameter shared by several modules counts once. MACs are for
    the whole example batch. ``bytes_fp32``/``bytes_fp16`` are the dense sizes;
    ``bytes_sparse_fp32``/``bytes_sparse_fp16`` the sizes in the compressed sparse encoding
    (bitmap + non-zero values, per tensor never more than dense; see
    ``prunekit.sparse.compressed``).
    """

    total_params: int
    trainable_params: int
    nonzero_params: int
    macs: int
    sparse_macs: int
    bytes_fp32: int
    bytes_fp16: int
    bytes_sparse_fp32: int
    bytes_sparse_fp16: int
    layers: tuple[LayerProfile, ...] = field(default_factory=tuple)

    @property
    def sparsity(self) -> float:
        """Fraction of all parameters that are exactly zero."""
        return 0.0 if self.total_params == 0 else 1.0 - self.nonzero_params / self.total_params

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (shapes become lists, derived sparsities included)."""
        out = asdict(self)
        out["sparsity"] = self.sparsity
        out["layers"] = [
            {**asdict(layer), "output_shape": _shape_list(layer.output_shape),
             "sparsity": layer.sparsity}
            for layer in self.layers
        ]
        return out

    def table(self, title: str | None = "Profile") -> Table:
        """A rich Table of the per-layer view with a total row."""
        table = Table(title=title)
        for header in ("layer", "type", "output"):
            table.add_column(header)
        for header in ("params", "non-zeros", "sparsity", "MACs", "sparse MACs"):
            table.add_column(header, justify="right")
        for layer in self.layers:
            table.add_row(
                layer.name or "(model)",
                layer.type,
                "×".join(map(str, layer.output_shape)) if layer.output_shape else "-",
                f"{layer.params:,}",
                f"{layer.nonzeros:,}",
                f"{layer.sparsity:.1%}",
                f"{layer.macs:,}",
                f"{layer.sparse_macs:,}",
            )
        table.add_section()
        table.add_row(
            "total", "", "", f"{self.total_params:,}", f"{self.nonzero_params:,}",
            f"{self.sparsity:.1%}", f"{self.macs:,}", f"{self.sparse_macs:,}",
        )
        return table

    def diff(self, after: Profile) -> ProfileDiff:
        """Ratios of ``after`` to this profile (see ``prunekit.metrics.compare``)."""
        return compare(self, after)


def profile(model: nn.Module, example_inputs: ExampleInputs) -> Profile:
    """Count parameters, non-zeros, MACs and bytes of ``model`` run on ``example_inputs``.

    The model runs once under ``torch.no_grad()`` (with grad where an example input requires
    it: a forward that differentiates by it) in its current train/eval mode on its own
    device (inputs are moved there). Nothing about the model is changed: buffers a
    training-mode pass updates (BatchNorm statistics) are restored, forward hooks removed,
    and the MHA fast path is switched off only for the run, because its fused kernel is
    invisible to the flop counter.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "pass the network itself (for a pruning result, pass result.model)"
        )
    return _profile(model, move_inputs(example_inputs, model_device(model)))


def _profile(model: nn.Module, inputs: ExampleInputs) -> Profile:
    modules = dict(_named_modules(model))
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}
    try:
        counter = _counted(model, inputs, modules, shapes, calls, per_module=True)
    except RuntimeError as exc:
        if "autograd.grad" not in str(exc):
            raise
        # torch's module tracker cannot follow a forward that calls torch.autograd.grad (a
        # Hamiltonian network's dH/dz): count the totals without it
        warn("profile: the forward calls torch.autograd.grad, which torch's module "
             "tracker cannot follow, so MACs are counted for the model as a whole, "
             "not per layer")
        shapes.clear()
        calls.clear()
        counter = _counted(model, inputs, modules, shapes, calls, per_module=False)
    op_flops = _own_flops(model, modules, counter.get_flop_counts())

    layers = []
    for name, module in modules.items():
        tensors = _own_tensors(module)
        if not (tensors or op_flops.get(name) or (name in calls and _is_leaf(module))):
            continue
        layers.append(_layer_profile(name, module, tensors, op_flops.get(name, {}),
                                     shapes.get(name), calls.get(name, 0)))

    total_macs = counter.get_total_flops() // 2
    skipped = sum(layer.macs - layer.sparse_macs for layer in layers)
    unique = _unique_effective_tensors(model)
    params = list(_unique_parameters(model))
    total, nonzero = count_params(model)
    return Profile(
        total_params=total,
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        nonzero_params=nonzero,
        macs=total_macs,
        sparse_macs=total_macs - skipped,
        bytes_fp32=4 * total,
        bytes_fp16=2 * total,
        bytes_sparse_fp32=sum(compressed_nbytes(t, 4) for t in unique),
        bytes_sparse_fp16=sum(compressed_nbytes(t, 2) for t in unique),
        layers=tuple(layers),
    )


def _sdpa_cpu_flop(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return int(sdpa_flop_count(query, key, value))


def _trilinear_flop(first: Any, second: Any, third: Any, expand1: Any, expand2: Any,
                    expand3: Any, *args: Any, **kwargs: Any) -> int:
    """``aten._trilinear`` (``nn.Bilinear``): one multiply-add pair per element of the three
    inputs broadcast together, each first unsqueezed at its ``expand`` dims (for a bilinear
    layer, batch · out · in1 · in2 MACs)."""
    full: list[int] = []
    for shape, expand in ((first, expand1), (second, expand2), (third, expand3)):
        sizes = list(shape)
        for dim in sorted(expand):
            sizes.insert(dim, 1)
        full = [max(a, b) for a, b in zip(full, sizes, strict=True)] if full else sizes
    return 2 * math.prod(full)


def _rnn_layer_flop(x: Any, w_ih: Any, w_hh: Any, *args: Any, **kwargs: Any) -> int:
    """``aten.mkldnn_rnn_layer`` (one layer and direction of ``nn.LSTM`` on CPU): every
    time step of every sequence multiplies its input by ``w_ih`` and its state by ``w_hh``
    (``x`` is ``[T, B, in]``, or ``[steps, in]`` for a packed sequence)."""
    steps = math.prod(x[:-1])
    return 2 * steps * (math.prod(w_ih) + math.prod(w_hh))


# CPU's fused attention kernel is missing from FlopCounterMode's registry (torch 2.13);
# it computes the same thing as the registered GPU kernels, so reuse their formula. Nor
# does it count nn.Bilinear's kernel, or nn.LSTM's on CPU.
_EXTRA_FLOP_FORMULAS: dict[Any, Any] = {torch.ops.aten._trilinear: _trilinear_flop}
if hasattr(torch.ops.aten, "mkldnn_rnn_layer"):  # nn.LSTM on CPU: not in the registry
    _EXTRA_FLOP_FORMULAS[torch.ops.aten.mkldnn_rnn_layer] = _rnn_layer_flop
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FLOP_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = (
        _sdpa_cpu_flop
    )


class _NoModuleTracker:
    """Stands in for FlopCounterMode's module tracker: every count goes to "Global"."""

    parents: ClassVar[frozenset[str]] = frozenset({"Global"})

    def __enter__(self) -> _NoModuleTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _counted(model: nn.Module, inputs: ExampleInputs, modules: dict[str, nn.Module],
             shapes: dict[str, tuple[int, ...] | None], calls: dict[str, int], *,
             per_module: bool) -> FlopCounterMode:
    """Run ``model`` once under a flop counter (no grad unless an input requires it: a
    forward that differentiates by it), filling ``shapes`` and ``calls``."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    if not per_module:
        counter.mod_tracker = _NoModuleTracker()  # type: ignore[assignment]
    mode = grad_mode(inputs, modules.values())
    with (
        mode,
        preserved_buffers(model),
        _shape_hooks(modules, shapes, calls),
        _mha_fastpath_off(),
        # (a forward that differentiates may do so by the parameters: MAML's inner step)
        contextlib.nullcontext() if isinstance(mode, torch.enable_grad) else _grad_off(model),
        counter,
    ):
        run_model(model, inputs)
    return counter


@contextlib.contextmanager
def _grad_off(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad for the run. Under no_grad a view of one (a class
    token ``expand``-ed to the batch) still requires grad but has no grad_fn, and the module
    tracker inside FlopCounterMode asserts on such a tensor passed to a submodule."""
    trainable = [p for p in model.parameters()
                 if p.requires_grad and p.is_leaf and not p.is_inference()]
    # (a TorchScript submodule's parameters are not leaves, and it keeps no module tracker;
    # a parameter made under inference_mode cannot require grad again outside it)
    for param in trainable:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in trainable:
            param.requires_grad_(True)


@contextlib.contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


@contextlib.contextmanager
def _shape_hooks(
    modules: Mapping[str, nn.Module],
    shapes: dict[str, tuple[int, ...] | None],
    calls: dict[str, int],
) -> Iterator[None]:
    def make_hook(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in shapes:
                shapes[name] = _first_tensor_shape(output)
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()
               if not isinstance(m, torch.jit.ScriptModule)]  # (TorchScript takes no hooks)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _first_tensor_shape(output: Any) -> tuple[int, ...] | None:
    if isinstance(output, torch.Tensor):
        return tuple(output.shape)
    values = output.values() if isinstance(output, Mapping) else output
    if isinstance(values, (tuple, list)) or isinstance(output, Mapping):
        for value in values:
            shape = _first_tensor_shape(value)
            if shape is not None:
                return shape
    return None


def _named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Like ``named_modules`` (each module once) but skipping parametrization internals."""
    seen: set[int] = set()

    def walk(prefix: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        if id(module) in seen:
            return
        seen.add(id(module))
        yield prefix, module
        for child_name, child in _children(module):
            yield from walk(f"{prefix}.{child_name}" if prefix else child_name, child)

    yield from walk("", model)


def _children(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    skip_parametrizations = parametrize.is_parametrized(module)
    for name, child in module.named_children():
        if not (skip_parametrizations and name == "parametrizations"):
            yield name, child


def _is_leaf(module: nn.Module) -> bool:
    return next(_children(module), None) is None


def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own parameters at their effective value (``original * mask`` if masked)."""
    out: dict[str, torch.Tensor] = {
        name: p for name, p in module.named_parameters(recurse=False) if p is not None
    }
    if parametrize.is_parametrized(module):
        for name in module.parametrizations:  # type: ignore[union-attr]
            out[name] = getattr(module, name)
    return out


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zeros of the effective weights), tied tensors once — ``profile``'s
    counts without its forward pass."""
    total = sum(p.numel() for p in _unique_parameters(model))
    return total, sum(_count_nonzero(t) for t in _unique_effective_tensors(model))


def _unique_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield p


def _unique_effective_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Effective tensors, each underlying Parameter once (tied weights, masked originals)."""
    seen: set[int] = set()
    out: list[torch.Tensor] = []
    for _, module in _named_modules(model):
        sources: dict[str, list[nn.Parameter]] = {
            n: [p] for n, p in module.named_parameters(recurse=False) if p is not None
        }
        if parametrize.is_parametrized(module):
            for n, plist in module.parametrizations.items():  # type: ignore[union-attr, operator]
                sources[n] = list(plist.parameters(recurse=False))
        for name, params in sources.items():
            if any(id(p) in seen for p in params):
                continue
            seen.update(id(p) for p in params)
            out.append(getattr(module, name).detach())
    return out


def _own_flops(
    model: nn.Module, modules: Mapping[str, nn.Module], counts: Mapping[str, Mapping[Any, int]]
) -> dict[str, dict[str, int]]:
    """Per module name, the FLOPs of ops it ran itself: its count minus its children's.

    FlopCounterMode keys its counts by ``<root class>.<path>``, naming each module by the
    last path ``named_children`` reaches it by; re-derive that naming to map keys back.
    """
    tracker_names: dict[int, str] = {}

    def name_tree(module: nn.Module, name: str, expanded: set[int]) -> None:
        tracker_names[id(module)] = name
        if id(module) in expanded:
            return
        expanded.add(id(module))
        for child_name, child in module.named_children():
            name_tree(child, f"{name}.{child_name}", expanded)

    name_tree(model, type(model).__name__, set())

    def inclusive(module: nn.Module) -> dict[str, int]:
        per_op = counts.get(tracker_names.get(id(module), ""), {})
        return {str(op): n for op, n in per_op.items()}

    def nested(module: nn.Module) -> Iterator[nn.Module]:
        """The nearest descendants that ran ops (a ModuleList never runs; its items do)."""
        for _, child in module.named_children():
            if tracker_names.get(id(child)) in counts:
                yield child
            else:
                yield from nested(child)

    own: dict[str, dict[str, int]] = {}
    for name, module in modules.items():
        flops = inclusive(module)
        for child in nested(module):
            for op, n in inclusive(child).items():
                flops[op] = flops.get(op, 0) - n
        flops = {op: n for op, n in flops.items() if n > 0}
        if flops:
            own[name] = flops
    return own


def _layer_profile(
    name: str,
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    flops: Mapping[str, int],
    output_shape: tuple[int, ...] | None,
    calls: int,
) -> LayerProfile:
    weights = [t for t in tensors.values() if t.dim() >= 2]
    numel = sum(t.numel() for t in weights)
    nnz = sum(_count_nonzero(t) for t in weights)
    macs = sparse = 0
    for op, n in flops.items():
        op_macs = n // 2
        macs += op_macs
        # attention multiplies activations by activations: weight zeros cannot skip it
        if numel == 0 or "attention" in op:
            sparse += op_macs
        else:
            sparse += (op_macs * nnz + numel // 2) // numel
    return LayerProfile(
        name=name,
        type=type(module).__name__.removeprefix("Parametrized"),
        params=sum(t.numel() for t in tensors.values()),
        nonzeros=sum(_count_nonzero(t) for t in tensors.values()),
        macs=macs,
        sparse_macs=sparse,
        output_shape=output_shape,
        calls=calls,
    )


def _count_nonzero(tensor: torch.Tensor) -> int:
    return int(torch.count_nonzero(tensor.detach()).item())


def _shape_list(shape: tuple[int, ...] | None) -> list[int] | None:
    return None if shape is None else list(shape)
