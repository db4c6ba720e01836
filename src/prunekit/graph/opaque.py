"""What the trace cannot see into: ``torch.compile`` wrappers and TorchScript modules (their
ops run outside Python) and quantized layers (packed integer weights, no parameters) are
refused by name with the fix, as are the observers and QAT layers of a model prepared for
quantization; a handler that fails on a call it does not expect becomes an unmappable op
instead of a crash mid-trace."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.graph.ops import OpNotMappable
from prunekit.graph.records import ModuleCall, ModuleHandler

if TYPE_CHECKING:
    from prunekit.graph.trace import TraceContext

__all__ = ["check_traceable", "compiled_error", "handler_failed", "opaque_scripts",
           "quantization_error"]


def check_traceable(model: nn.Module) -> None:
    """A TorchScript model runs its ops outside Python, where no trace sees them."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ConfigError(
            f"the model is a TorchScript module ({type(model).__name__}), whose ops run "
            f"outside Python where no trace sees them; prune the Python module, then "
            f"torch.jit.script/trace the pruned model"
        )


class _Scripted:
    """The handler of a TorchScript submodule: its ops run in the TorchScript interpreter,
    out of the trace's sight, so what it touches cannot be mapped (an error, or kept whole
    with ``strict=False``)."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        # one that holds parameters would have made channels of its own: an error (strict)
        raise OpNotMappable("a TorchScript module runs its ops outside Python, where the trace "
                            "cannot see them; prune the Python module before scripting it",
                            makes_channels=any(True for _ in call.module.parameters()))


_SCRIPTED = _Scripted()


def opaque_scripts(lookup: Callable[[nn.Module], ModuleHandler | None]
                   ) -> Callable[[nn.Module], ModuleHandler | None]:
    """``lookup``, with TorchScript submodules atomic and unmappable."""
    def found(module: nn.Module) -> ModuleHandler | None:
        if isinstance(module, torch.jit.ScriptModule):
            return _SCRIPTED
        return lookup(module)
    return found


def handler_failed(what: str, exc: Exception) -> str:
    """The reason given when a handler itself fails (a prunekit bug, or a call it does not
    expect): the op is treated as one no handler maps, so the user gets an error naming it
    (or, with ``strict=False``, its tensors kept whole) instead of a crash mid-trace."""
    return (f"prunekit's handler for {what} failed ({type(exc).__name__}: {exc}); please "
            f"report it")


def compiled_error(path: str) -> ConfigError:
    """A ``torch.compile`` wrapper cannot be traced op by op (its compiled graph runs instead
    of the module's forward and is specialised to the current widths)."""
    where = f"model.{path}" if path else "the model"
    return ConfigError(
        f"{where} is a torch.compile wrapper (OptimizedModule); prune the module it wraps "
        f"({where}._orig_mod) and compile the pruned model afterwards (or use "
        f"module.compile(), which prunes as is)"
    )


def quantization_error(path: str, module: nn.Module) -> ConfigError | None:
    """The refusal for a module of torch's quantization flows, or None. A quantized layer
    (``torch.ao.nn.quantized``, static or dynamic) holds packed integer weights, no
    parameters, and runs its kernels out of the trace's sight: the model would come back
    "pruned" with nothing removed. Observers, fake-quant modules and QAT layers that
    ``prepare``/``prepare_qat`` insert hold per-channel statistics sized to today's widths.
    ``QuantStub``/``DeQuantStub`` of a float model pass their input through, and
    ``FloatFunctional`` (DPT's and MiDaS's skip adder) adds floats with no weights; once
    prepared, its observer child is refused as such."""
    kind = type(module).__module__
    if not kind.startswith("torch.ao.") or kind == "torch.ao.quantization.stubs" or \
            type(module) is torch.ao.nn.quantized.FloatFunctional:
        return None
    where = f"model.{path}" if path else "the model"
    name = f"{kind}.{type(module).__name__}"
    if ".quantized" in kind:
        return ConfigError(
            f"{where} is a quantized layer ({name}), whose weights and outputs are quantized "
            f"integers that cannot be cut; prune the float model, then quantize the pruned "
            f"one (torch.ao.quantization.quantize_dynamic or your QAT/PTQ flow)"
        )
    if ".qat" in kind or kind.startswith("torch.ao.quantization."):
        return ConfigError(
            f"{where} ({name}) comes from preparing the model for quantization "
            f"(prepare / prepare_qat), and its observers' per-channel statistics are sized to "
            f"the current widths; prune the float model before preparing it, then prepare "
            f"the pruned model"
        )
    return None
