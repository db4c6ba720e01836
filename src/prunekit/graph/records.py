"""What one trace records: atomic module calls and their dims, param nodes, the result.

These are plain data; :mod:`prunekit.graph.trace` fills them while the model runs and
:mod:`prunekit.graph.dependency` turns a :class:`Trace` into groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor, nn

from prunekit.graph.labels import LabelSpace
from prunekit.graph.replay import Recording

if TYPE_CHECKING:
    from prunekit.graph.trace import TraceContext

__all__ = ["ModuleCall", "ModuleDim", "ModuleHandler", "ModuleRecord", "ParamRecord", "Trace"]


@dataclass(frozen=True)
class ModuleCall:
    """One call of an atomic module, as its forward hooks saw it."""

    name: str
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out: Any


class ModuleHandler(Protocol):
    """Trace-time half of a layer adapter: couples a module's input and output labels."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        """Record the module's dims with ``ctx.record_dim`` and label its output."""
        ...


@dataclass
class ModuleDim:
    """One prunable dimension of a module: a label per index; ``root`` if it made fresh ids;
    ``width``: channels of the layer per index (``head_dim`` for a dim of whole heads)."""

    labels: Tensor
    root: bool
    width: int = 1


@dataclass
class ModuleRecord:
    name: str
    module: nn.Module
    dims: dict[str, ModuleDim] = field(default_factory=dict)


@dataclass
class ParamRecord:
    """A parameter or buffer used directly by traced code; ``ids`` has its shape."""

    name: str
    tensor: Tensor
    ids: Tensor
    sliced_axes: set[int] = field(default_factory=set)
    whole: bool = False  # read as a whole by some op
    selected: Tensor | None = None  # elements read through slicing (bool, like ``ids``)
    axes: dict[int, tuple[Tensor, bool]] = field(default_factory=dict)  # as a layer weight
    # axes along which it met a tensor of one class kept whole (a model input) spanning them
    fixed_axes: set[int] = field(default_factory=set)


@dataclass
class Trace:
    """Everything the dependency builder needs from one forward pass."""

    space: LabelSpace
    modules: dict[str, ModuleRecord]
    params: dict[str, ParamRecord]
    skipped_ops: list[str]
    bindings: dict[tuple[str, str], Tensor] = field(default_factory=dict)
    output_shapes: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    # the shapes of a second pass in training mode, run when eval mode left layers unvisited
    train_output_shapes: list[tuple[str, tuple[int, ...]]] | None = None
    # (labels of one dim, N): a kernel wants that dim's width a multiple of N
    aligned: list[tuple[Tensor, int]] = field(default_factory=list)
    # what the data-dependent calls of each pass gave, for the forward check to put back
    replay: Recording | None = None
    train_replay: Recording | None = None
    # ("file:line", labels) where the code computes a number from a width (an attention
    # scale from the head width): pruning those channels changes the number
    width_numbers: list[tuple[str, Tensor]] = field(default_factory=list)
    # the path of every module whose forward ran in either pass (layers or not) on at least
    # one non-empty tensor, or on no tensor argument at all
    ran: frozenset[str] = frozenset()
    # module -> the sibling that ran whose records were copied for it (graph/mirror.py)
    mirrored: dict[str, str] = field(default_factory=dict)
    # (path, module) of every ModuleList and ModuleDict of the model, in named_modules order
    containers: list[tuple[str, nn.Module]] = field(default_factory=list)
    # (path, module) of every other module with three or more children (siblings held as
    # attributes, mirrored like a container's members, never refused)
    parents: list[tuple[str, nn.Module]] = field(default_factory=list)
    # the paths of the model's tensors that its forward wrote into (restored after the
    # trace): a later forward writes them again (graph/writes.py)
    written: tuple[str, ...] = ()
    # the classes of the model's modules (graph/numbers.py reads their source)
    classes: frozenset[type] = frozenset()
    # (path, attribute) of block attributes bound only because they repeat a size of a
    # layer in the block (RepVGG's in_channels): they follow it and split no allocation
    follows: frozenset[tuple[str, str]] = frozenset()
