"""Export a (pruned) model to ONNX and check that ONNX Runtime computes what PyTorch does.

Masks are baked into plain weights on a deep copy first (the user's model is untouched),
so the graph holds ordinary initializers. The file appears under its name only once the
export, the ONNX checker and the ONNX Runtime comparison have all passed.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from prunekit._inputs import ExampleInputs, move_inputs, run_model
from prunekit._warn import warn
from prunekit.errors import ConfigError, PrunekitError, check_choice, require
from prunekit.io.atomic import atomic_path
from prunekit.sparse.masks import strip

__all__ = ["ExportMismatchError", "Exporter", "export_onnx"]

Exporter = Literal["auto", "torchscript", "dynamo"]
_EXPORTERS: tuple[str, ...] = ("auto", "torchscript", "dynamo")


class ExportMismatchError(PrunekitError, RuntimeError):
    """ONNX Runtime's outputs differ from PyTorch's beyond the tolerance."""


def export_onnx(
    model: nn.Module,
    example_inputs: ExampleInputs,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    check: bool = True,
    exporter: Exporter = "auto",
    atol: float = 1e-4,
    rtol: float = 1e-3,
    dynamic_batch: bool = False,
) -> Path:
    """Write ``model`` (in eval mode, on CPU, masks baked in) as an ONNX file at ``path``.

    ``opset`` None takes the exporter's default. ``exporter="torchscript"`` is PyTorch's
    TorchScript-based exporter, which works offline with only ``onnx`` installed;
    ``"dynamo"`` is the ``torch.export``-based one and needs ``onnxscript``; ``"auto"`` picks
    dynamo when onnxscript is importable, else torchscript. With ``check`` and onnxruntime
    installed, the file is run on ``example_inputs`` and every output must match PyTorch's
    within ``atol + rtol·|expected|``; otherwise ExportMismatchError names the max abs diff
    and nothing is written. ``dynamic_batch=True`` leaves dim 0 of every input and output
    free (the file then runs on any batch size; without it, only on the example's). Returns
    the path written.
    """
    onnx = _import_or_require("onnx")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; "
            "pass the network itself (for a pruning result, pass result.model)"
        )
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ConfigError(f"opset={opset!r} is not a valid ONNX opset; pass e.g. opset=17 or None")
    if not isinstance(dynamic_batch, bool):
        raise TypeError(f"dynamic_batch must be True or False, got {dynamic_batch!r}")
    chosen = _resolve_exporter(check_choice("exporter", exporter, _EXPORTERS))
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module  # the wrapped network (the wrapper itself does not export)

    export_model = _stripped_copy(model).to("cpu").eval()
    inputs = move_inputs(example_inputs, "cpu")
    named_inputs = dict(_named_tensors(inputs, _root_prefix(inputs)))
    with torch.no_grad():
        named_outputs = dict(_named_tensors(run_model(export_model, inputs), "output"))

    target = Path(path)
    with atomic_path(target) as tmp:
        dynamic = {name: {0: "batch"} for name, t in (*named_inputs.items(),
                                                       *named_outputs.items())
                   if t.dim()} if dynamic_batch else None
        _export(export_model, inputs, tmp, list(named_inputs), list(named_outputs), opset,
                chosen, dynamic)
        onnx.checker.check_model(str(tmp))
        if check:
            _verify(tmp, named_inputs, list(named_outputs.values()), atol=atol, rtol=rtol)
    return target


def _stripped_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with masks baked in; ``model`` itself keeps its masks."""
    return strip(copy.deepcopy(model))


def _import_or_require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        require(module, "onnx")


def _resolve_exporter(exporter: str) -> str:
    has_onnxscript = importlib.util.find_spec("onnxscript") is not None
    if exporter == "auto":
        return "dynamo" if has_onnxscript else "torchscript"
    if exporter == "dynamo" and not has_onnxscript:
        require("onnxscript", "onnx")
    return exporter


def _root_prefix(inputs: Any) -> str:
    return "input" if isinstance(inputs, torch.Tensor) else ""


def _named_tensors(value: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors inside a (nested) tensor/tuple/list/dict, in order, with graph names: the
    prefix for a lone tensor, ``<prefix>_0``… for positions, the key for keyword inputs."""
    if isinstance(value, torch.Tensor):
        yield prefix or "output", value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _named_tensors(item, f"{prefix}_{key}" if prefix else str(key))
    elif isinstance(value, (tuple, list)):
        base = prefix or "input"
        for index, item in enumerate(value):
            yield from _named_tensors(item, f"{base}_{index}")


def _export(
    model: nn.Module,
    inputs: Any,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int | None,
    exporter: str,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> None:
    if isinstance(inputs, Mapping):
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] | None = dict(inputs)
    else:
        args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        kwargs = None
    with _quiet_legacy_exporter():
        torch.onnx.export(
            model,
            args,
            str(path),
            kwargs=kwargs,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            dynamo=exporter == "dynamo",
            external_data=False,
        )


@contextlib.contextmanager
def _quiet_legacy_exporter() -> Iterator[None]:
    """Hide the TorchScript exporter's deprecation notices: choosing it was deliberate."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed.*")
        yield


def _verify(
    path: Path,
    named_inputs: Mapping[str, torch.Tensor],
    expected: list[torch.Tensor],
    *,
    atol: float,
    rtol: float,
) -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        warn(
            "onnxruntime is not installed, so the exported graph was not compared with "
            "PyTorch; install it with: pip install 'prunekit[onnx]'")
        return
    ort = importlib.import_module("onnxruntime")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        graph_inputs = {i.name for i in session.get_inputs()}  # unused inputs pruned away
        feeds = {n: t.detach().numpy() for n, t in named_inputs.items() if n in graph_inputs}
        outputs = session.run(None, feeds)
    except Exception as exc:  # ORT's own exception types, NumPy's missing bfloat16
        raise ExportMismatchError(
            f"ONNX Runtime could not run the exported graph to check it ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); nothing was written — a bfloat16 or float64 "
            "model often fails there: cast it to float32 first (model.float() and float32 "
            "inputs), or pass check=False to write the file unchecked"
        ) from exc
    if len(outputs) != len(expected):
        raise ExportMismatchError(
            f"the ONNX graph has {len(outputs)} outputs but PyTorch returned {len(expected)} "
            "tensors; export a model whose forward returns tensors or tuples of tensors"
        )
    for index, (got, want) in enumerate(zip(outputs, expected, strict=True)):
        got_t = torch.from_numpy(got).to(torch.float64)
        want_t = want.detach().to(torch.float64)
        if got_t.shape != want_t.shape:
            raise ExportMismatchError(
                f"ONNX output {index} has shape {tuple(got_t.shape)}, PyTorch's "
                f"{tuple(want_t.shape)}"
            )
        if not torch.allclose(got_t, want_t, atol=atol, rtol=rtol, equal_nan=True):
            diff = float((got_t - want_t).abs().nan_to_num(nan=float("inf")).max())
            raise ExportMismatchError(
                f"ONNX Runtime output {index} differs from PyTorch: max abs diff {diff:.3g} "
                f"exceeds atol={atol:g} + rtol={rtol:g}·|expected|; nothing was written — "
                "try another opset/exporter, or loosen atol/rtol if the gap is expected"
            )
