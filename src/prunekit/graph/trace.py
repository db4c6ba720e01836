"""Tracing: one real forward pass that shadows every activation with channel labels.

The model runs once under ``torch.no_grad()`` on the user's example inputs, so Python
control flow, frozen parameters and modules that never saw a gradient are all seen as
they run (no autograd graph is used). Modules that have a *module handler* (a layer
adapter: Conv, Linear, norms, ...) are atomic: forward hooks hand their inputs and output
to the handler and nothing inside them is recorded. Everything else that happens on
tensors (``torch.*``, ``Tensor.*``, ``F.*``) is seen by a ``TorchFunctionMode`` and routed
to an op handler (:mod:`prunekit.graph.ops`). Parameters and buffers used directly by
that code (class tokens, positional embeddings, scale vectors) become *param nodes* with
one label per element. Tensors are tracked by identity and kept alive for the whole trace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunekit._buffers import preserved_buffers
from prunekit._caches import recomputed_caches
from prunekit._inputs import ExampleInputs, walk_tensors
from prunekit._warn import warn
from prunekit.errors import PrunekitError, UnsupportedOpError
from prunekit.graph.callers import rebuilt_attribute
from prunekit.graph.hooks import FUNC_TRANSFORM, CallStack, Recorder
from prunekit.graph.labels import NEUTRAL, LabelSpace, consume, emit, fixed_shape
from prunekit.graph.numbers import forward_reads, reads_training
from prunekit.graph.opaque import (
    check_traceable,
    compiled_error,
    handler_failed,
    opaque_scripts,
    quantization_error,
)
from prunekit.graph.ops import (
    LIKE,
    REGION_POOLS,
    OpCall,
    OpHandler,
    OpNotMappable,
    call_tensors,
    get_op_handler,
    op_name,
    tensors_in,
)
from prunekit.graph.ops_factory import UNIFORM, attribute_sized
from prunekit.graph.param_views import ParamViews
from prunekit.graph.passes import (
    layer_roots,
    traced_pass,
    unread_outputs,
    unvisited,
    unvisited_layers,
    walk_modules,
)
from prunekit.graph.records import (  # (defined there, imported from here by the adapters)
    ModuleCall,
    ModuleDim,
    ModuleHandler,
    ModuleRecord,
    ParamRecord,
    Trace,
)
from prunekit.graph.size_reads import size_read
from prunekit.graph.sizes import SizeTracker, check_sizes, with_sizes
from prunekit.graph.writes import WriteGuard, names_of

__all__ = [
    "ModuleCall",
    "ModuleDim",
    "ModuleHandler",
    "ModuleRecord",
    "ParamRecord",
    "Trace",
    "TraceContext",
    "trace",
]


class TraceContext:
    """What op and module handlers may use while the model runs."""

    def __init__(self, model: nn.Module, strict: bool) -> None:
        self.space = LabelSpace()
        self.strict = strict
        self.modules: dict[str, ModuleRecord] = {}
        self.params: dict[str, ParamRecord] = {}
        self.skipped_ops: list[str] = []
        self._labels: dict[int, tuple[Tensor, Tensor]] = {}
        # tensors whose labels are ``emit(vector, dim, shape)`` (most CNN activations): kept
        # as (tensor, dim, vector, shape), the label tensor is only built when asked for
        # (``shape``: the tensor's when set; an in-place op may change it before relabelling)
        self._vectors: dict[int, tuple[Tensor, int, Tensor, torch.Size]] = {}
        self._calls = CallStack(model)  # the running modules; whether ops are recorded
        self._ops: dict[Callable[..., Any], tuple[str, str, OpHandler | None]] = {}
        self.bindings: dict[tuple[str, str], Tensor] = {}
        self.follows: set[tuple[str, str]] = set()  # see Trace.follows
        self.aligned: list[tuple[Tensor, int]] = []  # see :meth:`align`
        self.sizes = SizeTracker()  # ints read from shapes (graph/sizes.py)
        self._param_names: dict[int, str] = {}
        # tensors computed from parameters and buffers alone (id -> tensor, kept alive)
        self._built: dict[int, Tensor] = {}
        # ids of the tensors ops without tracked inputs made (factories, constants): they
        # carry no channels; a float tensor neither made so nor tracked came from code the
        # trace did not see (graph/trace.py: TraceContext.labels)
        self._made: set[int] = set()
        self.unseen: list[str] = []  # where such tensors were read, for one warning
        # checks that wait for the trace's end, when later ops have joined what they judge
        # (size comparisons: graph/size_reads.py; slices of parameter-built tensors)
        self.at_end: list[Callable[[], None]] = []
        # (labels, module path, attribute, line) of each tensor of one value that a factory
        # sized by an attribute (``h = x.new_zeros(B, self.hidden)``): see _warn_one_step
        self.states: list[tuple[Tensor, str, str, str]] = []
        # ids of layer outputs no op, layer or model output has read yet (each kept alive by
        # its labels for the trace): where one is left, unread_outputs looks closer
        self.unread: set[int] = set()
        self.param_views = ParamViews()  # W.t(), W[e]: maybe layer weights (param_views.py)
        # tensors that keep channels whole once anything reads them (the indices
        # ``max(x, dim)`` returns over channels): id -> (tensor, what a read does)
        self.watched: dict[int, tuple[Tensor, Callable[[], None]]] = {}
        self.width_numbers: list[tuple[str, Tensor]] = []  # see Trace.width_numbers
        # one walk of the module tree serves the param names, the hooks and eval mode
        walk = walk_modules(model)
        self.writes = WriteGuard()  # what the forward writes into them, put back after
        for members in ("_parameters", "_buffers"):  # named_parameters, then named_buffers
            for prefix, module in walk:
                for key, tensor in getattr(module, members).items():
                    if tensor is not None:
                        self.writes.watch(tensor)
                    # int/bool buffers are indices and masks
                    if tensor is not None and (tensor.is_floating_point() or tensor.is_complex()):
                        self._param_names.setdefault(id(tensor),
                                                     f"{prefix}.{key}" if prefix else key)
        self.containers: list[tuple[str, nn.Module]] = []  # its ModuleLists, ModuleDicts
        self.parents: list[tuple[str, nn.Module]] = []  # other modules of 3+ children
        self._named_modules: list[tuple[str, nn.Module]] = []  # what named_modules() gives:
        seen: set[int] = set()  # each module once, at its first path
        for name, module in walk:
            if module.__dict__.get("max_norm") is not None:  # (no nn.Module.__getattr__)
                weight = module._parameters.get("weight")
                if isinstance(weight, Tensor):
                    self.writes.save(weight)  # renormalised in place by each lookup
            if type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod"):
                raise compiled_error(name)
            if type(module).__module__.startswith("torch.ao."):
                refusal = quantization_error(name, module)
                if refusal is not None:
                    raise refusal
            if id(module) not in seen:
                seen.add(id(module))
                self._named_modules.append((name, module))
                if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
                    self.containers.append((name, module))
                elif len(module._modules) >= 3:  # siblings held as attributes: VLMo's
                    self.parents.append((name, module))  # mlp_text / mlp_imag / mlp_vl
        self._model = model

    # -- labels of tensors -------------------------------------------------------------
    def is_tracked(self, tensor: Tensor) -> bool:
        key = id(tensor)
        return key in self._labels or key in self._vectors or key in self._param_names or \
            key in self.param_views or self._attribute_node(tensor)

    def size_labels(self, tensor: Tensor) -> Tensor | None:
        """The labels of an activation whose shape the code reads (None for a parameter, a
        buffer or an untracked tensor: reading their shape must not make param nodes)."""
        key = id(tensor)
        if key in self._param_names or key in self.param_views or not (
                key in self._labels or key in self._vectors):
            return None
        return self.labels(tensor)

    def labels(self, tensor: Tensor, *, partial: bool = False) -> Tensor:
        """The label tensor of ``tensor`` (a param node's ids, NEUTRAL if never seen).

        ``partial`` marks a read of a parameter through slicing, so elements it never
        reads do not decide its channel axis."""
        vector = self._vectors.get(id(tensor))
        if vector is not None and id(tensor) not in self._labels:
            self._labels[id(tensor)] = (vector[0], emit(vector[2], vector[1], vector[3]))
        record = self.param_record(tensor)
        if record is None and id(tensor) in self._param_names and \
                id(tensor) not in self._labels:
            name = self._param_names[id(tensor)]
            ids = self.space.new_ids(tensor.numel()).reshape(tensor.shape)
            record = self.params[name] = ParamRecord(name, tensor, ids)
            self._labels[id(tensor)] = (tensor, ids)
        if record is not None:
            record.whole = record.whole or not partial
            return record.ids
        entry = self._labels.get(id(tensor))
        if entry is not None and entry[0] is tensor:
            return entry[1]
        if self.param_views.read(tensor, partial):  # a deferred view, read as a tensor
            return self.labels(tensor)
        if self._attribute_node(tensor):
            return self.labels(tensor, partial=partial)
        if tensor.dim() and tensor.numel() > 1 and tensor.is_floating_point() and \
                id(tensor) not in self._made:
            return self._unseen(tensor)
        return _constant(NEUTRAL, tensor.shape)  # (one element broadcasts to any width:
        # TabNet's torch.sqrt(torch.FloatTensor([0.5])), which the trace does not see made)

    def _unseen(self, tensor: Tensor) -> Tensor:
        """Labels of a float tensor that no traced op made (a constant from outside the
        model, NumPy, a C/C++ extension, ``torch.vmap``, a TorchScript function,
        ``Tensor.as_subclass``): how its elements relate to channels is unknown, so its
        shape is fixed and the channels it meets are kept whole (as NEUTRAL it would have
        let a branch stacked with it shrink alone)."""
        where = f"module {self.path!r}" if self.path else "the model's own forward"
        reason = (f"a tensor of shape {tuple(tensor.shape)} that the trace did not see being "
                  f"made (a constant from outside the model, NumPy, a C/C++ extension, "
                  f"torch.vmap, a TorchScript function, Tensor.as_subclass?), read at {where}: "
                  f"it has a fixed size, so the channels it meets are kept whole")
        self.unseen.append(reason)
        labels = fixed_shape(self.space, tensor.shape, reason)
        self._labels[id(tensor)] = (tensor, labels)
        return labels

    def _attribute_node(self, tensor: Tensor) -> bool:
        """Make ``tensor`` a param node if a running module holds it as a plain attribute
        (``self.scale = torch.ones(1, C, 1, 1)``, neither parameter nor buffer): its shape is
        as fixed as a buffer's, and surgery cuts it like one. Looked up only for tensors the
        trace has not seen (rare), in the modules whose forward is running."""
        if not tensor.is_floating_point():  # int/bool tensors are indices and masks
            return False
        modules, paths = self._calls.modules, self._calls.paths
        for depth in range(len(modules) - 1, -1, -1):
            for attr, value in modules[depth].__dict__.items():
                if value is tensor:
                    path = paths[depth - 1] if depth else ""
                    name = f"{path}.{attr}" if path else attr
                    self._param_names[id(tensor)] = name
                    if rebuilt_attribute(type(modules[depth]), attr):
                        # a cache the module's own code rebuilds at its own width (ESPnet's
                        # positional table, grown for a longer input): cut, it would come
                        # back at the old width
                        self.block(self.labels(tensor), f"tensor attribute {name!r} is "
                                   f"rebuilt by the module's own code (a cache), which would "
                                   f"make it again at its unpruned width")
                    return True
        return False

    def set_labels(self, tensor: Tensor, labels: Tensor) -> None:
        if labels.shape != tensor.shape:
            raise OpNotMappable(
                f"label shape {tuple(labels.shape)} != tensor shape {tuple(tensor.shape)}"
            )
        self._labels[id(tensor)] = (tensor, labels)
        found = _as_vector(labels)
        if found is None:
            self._vectors.pop(id(tensor), None)
        else:  # a broadcast vector already (an expand, a slice of one): fast paths may use it
            self._vectors[id(tensor)] = (tensor, found[0], found[1], labels.shape)

    def set_vector(self, tensor: Tensor, vector: Tensor, dim: int) -> None:
        """``set_labels(tensor, emit(vector, dim, tensor.shape))``, kept in vector form."""
        ndim, shape = tensor.dim(), tensor.shape
        dim = dim % max(ndim, 1)
        if vector.dim() != 1 or ndim == 0 or vector.numel() != shape[dim]:
            self.set_labels(tensor, emit(vector, dim, shape))
            return
        key = id(tensor)
        self._vectors[key] = (tensor, dim, vector, shape)
        self._labels.pop(key, None)

    def vector_of(self, tensor: Tensor) -> tuple[int, Tensor] | None:
        """(dim, vector) if the labels of ``tensor`` are ``emit(vector, dim, tensor.shape)``
        (never for a parameter or buffer: those are param nodes), else None."""
        key = id(tensor)
        entry = self._vectors.get(key)
        if entry is None or entry[0] is not tensor or key in self._param_names or (
                entry[3] != tensor.shape):  # reshaped in place since: the general path
            return None
        return entry[1], entry[2]

    def consume(self, tensor: Tensor, dim: int) -> Tensor:
        """``consume(ctx.space, ctx.labels(tensor), dim)``: the label of each channel along
        ``dim`` of a tensor that a layer reads."""
        vector = self.vector_of(tensor)
        if vector is not None and vector[0] == dim % tensor.dim():
            # one label per index along dim, the same at every other position: nothing to
            # join, and consume's result is that vector's roots
            return self.space.find(vector[1])
        return consume(self.space, self.labels(tensor), dim)

    def block(self, labels: Tensor, reason: str) -> None:
        self.space.block(labels, reason)

    def same_as_param(self, tensor: Tensor) -> Tensor | None:
        """The parameter ``tensor`` is, or holds one for one (``W.squeeze(1)``, ``W.float()``,
        ``W * mask``, ``mu + sigma * eps``: a deferred view of kind ``"same"``); None for any
        other tensor. The tensors combined with it are then cut as ``W`` is, when the trace
        ends."""
        if self.is_param(tensor):
            return tensor
        root = self.param_views.weight(tensor, "same")
        masks = self.param_views.companions.get(id(tensor)) if root is not None else None
        if root is not None and masks:
            self.at_end.append(lambda: self._cut_alike(root, masks))
        return root

    def _cut_alike(self, weight: Tensor,
                   masks: tuple[tuple[Tensor, tuple[int | None, ...] | None], ...]) -> None:
        """Give each mask the axes ``weight`` was cut along as a layer weight (if it was),
        mapped to the mask's own axes (a broadcast mask lacks some)."""
        record = self.param_record(weight)
        if record is None or not record.axes:
            return
        for mask, axes in masks:
            companion = self.layer_weight(mask)
            if companion is None:
                continue
            for axis, (labels, _) in list(record.axes.items()):
                target = axis if axes is None else axes[axis]
                if target is not None:
                    self.weight_axis(companion, target, labels=labels)

    def is_param_built(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is a parameter or buffer, or was computed from such alone (a
        bias table rebuilt in forward): its elements are joined to channels only by later
        ops, so its channel axis is known only when the trace ends."""
        key = id(tensor)
        return key in self._param_names or self._built.get(key) is tensor

    def layer_weight(self, tensor: Tensor) -> ParamRecord | None:
        """The param node of a parameter that code uses as a layer weight (``F.linear(x,
        self.weight)``), or None if ``tensor`` is not a parameter/buffer of the model."""
        if self.param_record(tensor) is None and id(tensor) in self._param_names:
            self.labels(tensor, partial=True)
        return self.param_record(tensor)

    def weight_axis(self, record: ParamRecord, axis: int, *, labels: Tensor | None = None,
                    count: int = 0) -> Tensor:
        """Labels of one axis of a layer weight: ``labels`` read from the input (joined on a
        later call), or fresh ids for the axis the weight produces."""
        existing = record.axes.get(axis)
        if existing is not None:
            if labels is not None:
                self.space.union(existing[0], labels)
            return existing[0]
        if labels is not None:
            record.axes[axis] = (labels.reshape(-1).clone(), False)
        else:
            record.axes[axis] = (self.space.new_ids(count), True)
        return record.axes[axis][0]

    def is_param(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is a parameter or float buffer of the model."""
        return id(tensor) in self._param_names

    def param_record(self, tensor: Tensor) -> ParamRecord | None:
        """The param node of ``tensor`` if it is a parameter/buffer used directly."""
        name = self._param_names.get(id(tensor))
        record = self.params.get(name) if name is not None else None
        return record if record is not None and record.tensor is tensor else None

    @property
    def path(self) -> str:
        """Dotted path of the innermost module running now ('' for the model itself)."""
        paths = self._calls.paths
        return paths[-1] if paths else ""

    @property
    def running_module(self) -> nn.Module:
        """The innermost module whose forward is running now."""
        return self._calls.modules[-1]

    def bind_attribute(self, name: str, attr: str, labels: Tensor) -> None:
        """Module ``name``'s int attribute ``attr`` counts the channels in ``labels``; it is
        rewritten after pruning. Two bindings of one attribute shrink index by index."""
        key = (name, attr)
        existing = self.bindings.get(key)
        if existing is None:
            self.bindings[key] = labels.reshape(-1).clone()
        elif existing.numel() == labels.numel():
            self.space.union(existing, labels.reshape(-1))
        else:
            self.block(labels, f"attribute {attr!r} of {name!r} sizes tensors of different widths")
            self.block(existing, f"attribute {attr!r} of {name!r} sizes tensors of "
                                 f"different widths")

    def align(self, labels: Tensor, multiple: int) -> None:
        """The dim whose channels ``labels`` lists must keep a multiple of ``multiple`` of
        them (or all): a kernel's layout rule, such as grouped products' 16-byte strides."""
        if multiple > 1:
            self.aligned.append((labels.reshape(-1).clone(), multiple))

    # -- module dims -------------------------------------------------------------------
    def _record(self, name: str, module: nn.Module) -> ModuleRecord:
        record = self.modules.get(name)
        if record is None:
            record = self.modules[name] = ModuleRecord(name, module)
        return record

    def module_ids(self, name: str, module: nn.Module, dim: str, count: int, *,
                   width: int = 1) -> Tensor:
        """Fresh ids for a module's own dimension, the same ones on every call; ``width``
        channels of the layer per id (``round_to`` counts them)."""
        record = self._record(name, module)
        existing = record.dims.get(dim)
        if existing is not None and existing.labels.numel() == count:
            return existing.labels
        ids = self.space.new_ids(count)
        record.dims[dim] = ModuleDim(ids, root=True, width=width)
        return ids

    def record_dim(
        self, name: str, module: nn.Module, dim: str, labels: Tensor, *, root: bool = False
    ) -> None:
        """Record the labels a module's dimension sees; a second call joins them."""
        record = self._record(name, module)
        existing = record.dims.get(dim)
        if existing is None:
            flat = labels if labels.dim() == 1 else labels.reshape(-1)
            record.dims[dim] = ModuleDim(flat.clone(), root=root)
        elif existing.labels.numel() == labels.numel():
            self.join_read(existing.labels, labels.reshape(-1), f"module {name!r}")
        else:
            self.block(labels, f"module {name!r} is called with different widths")

    def join_read(self, units: Tensor, read: Tensor, what: str) -> None:
        """Join ``units`` (a layer's channels) with the vector it reads; where the read
        tensor carries no channels (NEUTRAL: made at a size written in the code, a recurrent
        state ``torch.zeros(B, 48)`` or a step-0 input), its width is fixed, so the units are
        kept whole (the join alone would skip it and the pruned layer would reject it)."""
        fixed = (read == NEUTRAL) | (units == NEUTRAL)  # (either call's)
        if read.numel() > 1 and bool(fixed.any()):  # (only where it is: RAFT's GRU reads a
            # flow that starts as a made tensor in the first of its iterations)
            reason = (f"{what} reads a tensor of a fixed width here (made at a size written "
                      f"in the code, e.g. torch.zeros(B, {read.numel()})); make it at the "
                      f"layer's size (x.new_zeros(B, self.cell.hidden_size)) to prune it")
            self.block(units[fixed], reason)
            self.block(read[fixed], reason)
        self.space.union(units, read)  # (NEUTRAL joins nothing)

    # -- recording ---------------------------------------------------------------------
    def watch(self, tensor: Tensor, on_read: Callable[[], None]) -> None:
        """Call ``on_read`` when an op or layer first reads ``tensor``."""
        self.watched[id(tensor)] = (tensor, on_read)

    def _read_watched(self, tensors: list[Tensor]) -> None:
        for tensor in tensors:
            found = self.watched.get(id(tensor))
            if found is not None and found[0] is tensor:
                del self.watched[id(tensor)]
                found[1]()

    def record_op(self, func: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any], out: Any) -> None:
        inputs = call_tensors(args, kwargs)
        unread = self.unread
        if unread:
            for tensor in inputs:
                unread.discard(id(tensor))
        if self.watched and self._op(func)[0] not in LIKE:  # (a shape read is no read)
            self._read_watched(inputs)
        outputs = [out] if isinstance(out, Tensor) else tensors_in(out)
        if not outputs and not (inputs and _is_setitem(func)):
            return
        labels, vectors, params, views = (self._labels, self._vectors, self._param_names,
                                          self.param_views)
        for t in inputs:  # any(self.is_tracked(t) for t in inputs), inlined: once per op
            key = id(t)
            if key in labels or key in vectors or key in params or key in views:
                break
        else:  # a factory sized by a shape read (torch.zeros(B, C)) or an attribute
            if inputs and any(self._attribute_node(t) for t in inputs):
                # a plain tensor attribute read first through an op (VideoMAE's
                # self.position_embeddings.detach()): a param node now, handled below
                return self.record_op(func, args, kwargs, out)
            made = self._made
            if all(id(t) in made or not t.dim() or not t.is_floating_point()
                   for t in inputs):  # (what an unseen tensor makes is unseen too)
                made.update(id(t) for t in outputs)
            if not self._calls.atomic_depth and all(t.numel() == 1 for t in inputs):
                # no tensor, or an untracked fill value repeated (``t.repeat(sizes)``)
                name, display, _ = self._op(func)
                if (name in UNIFORM or self.sizes.live) and (not inputs or name == "repeat"):
                    call = OpCall(func, name, display, args, kwargs, out)
                    if self.sizes.live:
                        check_sizes(self, call)
                    attribute_sized(self, call)
            return
        if outputs and not outputs[0].numel() and all(t.numel() == 0 for t in outputs) and any(
                t.numel() == 0 and id(t) not in params and id(t) not in views for t in inputs) \
                and self._op(func)[0] not in REGION_POOLS:
            # run on an empty activation (the tokens of an expert none picked) and giving
            # empty tensors: no element carries a channel, so it couples nothing (its layer
            # weight's axes are coupled by the calls that got tokens); a region pooling of
            # no regions still gives the feature map's channels (Mask R-CNN's mask head)
            for tensor in outputs:
                self.set_labels(tensor, torch.zeros(tensor.shape, dtype=torch.long))
            return
        built = self._built
        if all(id(t) in params or built.get(id(t)) is t for t in inputs):
            for tensor in outputs:  # computed from parameters alone
                built[id(tensor)] = tensor
        name, display, handler = self._op(func)
        call = OpCall(func, name, display, args, kwargs, out)
        reason = f"no handler for op {display}"
        makes_channels = False
        if handler is not None:
            try:
                handler(self, call)
                return
            except OpNotMappable as exc:
                reason = f"op {display} cannot be mapped here ({exc})"
                makes_channels = exc.makes_channels
            except PrunekitError:
                raise
            except Exception as exc:  # a handler's own failure: refused by name, not a crash
                reason = handler_failed(f"op {display}", exc)
        self._unsupported(call, inputs, outputs, reason, makes_channels)

    def _op(self, func: Callable[..., Any]) -> tuple[str, str, OpHandler | None]:
        """(name, display name, handler) of ``func``, worked out once per trace."""
        try:
            found = self._ops.get(func)
        except TypeError:  # an unhashable callable
            name, display = op_name(func)
            return name, display, with_sizes(name, get_op_handler(name))
        if found is None:
            name, display = op_name(func)
            found = self._ops[func] = (name, display, with_sizes(name, get_op_handler(name)))
        return found

    def _unsupported(self, call: OpCall, inputs: list[Tensor], outputs: list[Tensor],
                     reason: str, makes_channels: bool = False) -> None:
        """Strict: an error if the op touches prunable channels or would have made its own.
        Otherwise what it touches is kept whole (with a warning if that loses channels)."""
        live = [self.labels(t) for t in inputs]
        prunable = makes_channels or any(self._has_prunable(lab) for lab in live)
        where = f"module {self.path!r}" if self.path else "the model's own forward"
        if prunable and self.strict:
            raise UnsupportedOpError(
                f"{reason}, reached from {where}. prunekit cannot tell how it maps channels, "
                f"so it will not guess. Fix: pass strict=False to keep the tensors it touches "
                f"unpruned, or register an op handler with "
                f"prunekit.graph.register_op({call.name!r}, handler)"
            )
        message = f"{reason} at {where}: the tensors it touches are kept whole"
        if prunable:
            warn(message)
            self.skipped_ops.append(message)
        bid = self.space.block_id(message)
        for lab in live:
            self.space.union(lab.unique(), torch.tensor([bid]))
        for tensor in outputs:
            self.set_labels(tensor, _constant(bid, tensor.shape))

    def _has_prunable(self, labels: Tensor) -> bool:
        real = labels[labels != NEUTRAL]
        if real.numel() == 0:
            return False
        roots = self.space.find(real.unique())
        blocked = torch.tensor(list(self.space.blocked_roots()), dtype=torch.long)
        return bool((~torch.isin(roots, blocked)).any())

    def record_module(self, handler: ModuleHandler, call: ModuleCall) -> None:
        layer = type(call.module).__name__
        if self.watched or self.unread:
            inputs = tensors_in((call.args, call.kwargs))
            if self.watched:
                self._read_watched(inputs)
            for tensor in inputs:
                self.unread.discard(id(tensor))
        makes_channels = False
        try:
            handler.trace(self, call)
            if isinstance(call.out, Tensor):  # read by nothing yet (see unread_outputs)
                self.unread.add(id(call.out))
            return
        except OpNotMappable as exc:
            reason = f"layer {layer} cannot be mapped here ({exc})"
            makes_channels = exc.makes_channels
        except PrunekitError:
            raise
        except Exception as exc:  # a handler's own failure: refused by name, not a crash
            reason = handler_failed(f"layer {layer}", exc)
        self._calls.paths.append(call.name)
        try:
            op = OpCall(type(call.module), layer, type(call.module).__qualname__, call.args,
                        call.kwargs, call.out)
            self._unsupported(op, tensors_in((call.args, call.kwargs)), tensors_in(call.out),
                              reason, makes_channels)
        finally:
            self._calls.paths.pop()

    def hooks(self, model: nn.Module, lookup: Callable[[nn.Module], ModuleHandler | None]
              ) -> contextlib.AbstractContextManager[None]:
        """Hooks on every module of ``model`` while it runs (see :class:`CallStack`): each
        module with a handler is atomic, and its handler records it."""
        modules = self._named_modules if model is self._model else model.named_modules()
        return self._calls.hooks(modules, lookup, self.record_module)

    @property
    def recording(self) -> bool:
        """False while an atomic module runs (its inner ops are not recorded)."""
        return self._calls.recording


def _constant(label: int, shape: torch.Size) -> Tensor:
    """One label everywhere, as a broadcast view (no memory per element of a big input)."""
    return torch.full((), label, dtype=torch.long).expand(shape)


def _as_vector(labels: Tensor) -> tuple[int, Tensor] | None:
    """(dim, vector) if ``labels`` is ``emit(vector, dim, shape)`` by its strides: exactly one
    dim of size > 1 that is not broadcast (stride 0); a view of that line, else None (also
    for an empty tensor: the pass-through half ``q[..., rotary_dim:]`` of a rotary embedding
    that covers the whole head)."""
    if labels.numel() == 0:
        return None
    strides = labels.stride()
    found = -1
    for dim, (size, stride) in enumerate(zip(labels.shape, strides, strict=True)):
        if size > 1 and stride != 0:
            if found >= 0:
                return None
            found = dim
    if found < 0:
        return None
    line = labels.as_strided((labels.shape[found],), (strides[found],), labels.storage_offset())
    return found, line


def _is_setitem(func: Any) -> bool:
    return getattr(func, "__name__", "") == "__setitem__"


@contextlib.contextmanager
def _functorch_refused() -> Iterator[None]:
    """Turn the error the trace meets on a tensor without storage (a ``torch.func`` transform
    in the forward: ``vmap(jacrev(f))``'s batched tensors) into one that says so."""
    try:
        yield
    except RuntimeError as exc:
        if "doesn't have storage" not in str(exc) or isinstance(exc, UnsupportedOpError):
            raise
        raise UnsupportedOpError(FUNC_TRANSFORM) from exc


_LAYER_SIZES = {"in_channels": "in", "in_features": "in", "out_channels": "out",
                "out_features": "out"}


def _mirror_layer_sizes(ctx: TraceContext) -> None:
    """A block's own int attribute that repeats a size of the layers in it (RepVGG's
    ``self.in_channels``, which ``switch_to_deploy`` reads and forward never does) follows
    that layer's dim: bound to its labels, it is rewritten with it and replayed on load.
    The layer is the first in the block to run for an input size, the last for an output
    size, and only where its size is the attribute's (in SKNet's ``SelectiveKernel`` the
    first layer reads half of ``in_channels``: left alone); in a block of norms alone
    (FastViT's skip-only ``MobileOneBlock``), its norm's channels. Likewise the width of a
    block that keeps its width (``dim``, ``embed_dim``: FastViT's ``RepMixer``), and the
    ``groups`` of a block whose first layer is a depthwise conv of that many groups
    (MobileOne's, which its ``reparameterize()`` reads), where ``forward`` does not read
    them (there a ``dim`` may be an axis: ``x.chunk(2, dim=self.dim)``). Layers themselves
    are left to their adapters, and attributes already bound to what forward reads them for
    keep that binding. Such an attribute splits no allocation (:attr:`Trace.follows`)."""
    records = list(ctx.modules.values())  # in the order they first ran
    for path, module in ctx._named_modules:
        if path in ctx.modules:
            continue
        state = vars(module)
        candidates = [(attr, state[attr]) for attr in _MIRRORED if attr in state
                      and type(state[attr]) is int and (path, attr) not in ctx.bindings]
        if not candidates:
            continue
        prefix = f"{path}." if path else ""
        inside = [r for r in records if r.name.startswith(prefix)]
        for attr, value in candidates:
            if attr not in _LAYER_SIZES and attr in forward_reads(type(module)):
                continue  # (a dim or groups that forward reads is an axis or a count)
            labels = _mirrored(inside, attr, value)
            if labels is not None:
                ctx.bind_attribute(path, attr, labels)
                ctx.follows.add((path, attr))


_BLOCK_WIDTHS = frozenset(("dim", "embed_dim", "channels", "num_channels"))
_MIRRORED = (*_LAYER_SIZES, "groups", *sorted(_BLOCK_WIDTHS))


def _mirrored(inside: list[ModuleRecord], attr: str, value: int) -> Tensor | None:
    """The labels of the dim of the block's layers (``inside``, in the order they ran) that
    its int attribute ``attr`` of ``value`` repeats (:func:`_mirror_layer_sizes`), else None."""
    dim = _LAYER_SIZES.get(attr)
    if dim is not None:
        layers = [r for r in inside if dim in r.dims and hasattr(r.module, attr)]
        if layers:
            layer = layers[0] if dim == "in" else layers[-1]
            return layer.dims[dim].labels if getattr(layer.module, attr) == value else None
        norms = [r for r in inside if "channels" in r.dims]
        if norms and len(norms) == len(inside) and \
                norms[0].dims["channels"].labels.numel() == value:
            return norms[0].dims["channels"].labels  # a block of norms alone
        return None
    widths = [r for r in inside if "in" in r.dims or "out" in r.dims]
    if not widths or value < 2:
        return None
    first = widths[0]
    if attr == "groups":  # a depthwise first layer: its groups are its channels
        conv = first.module
        depthwise = getattr(conv, "groups", None) == getattr(conv, "in_channels", None) == value
        return first.dims["in"].labels if depthwise and "in" in first.dims else None
    if attr in _BLOCK_WIDTHS and "in" in first.dims and "out" in widths[-1].dims and \
            first.dims["in"].labels.numel() == widths[-1].dims["out"].labels.numel() == value:
        return first.dims["in"].labels
    return None


def _warn_one_step(ctx: TraceContext) -> None:
    """Warn of a recurrence the example ran for one step: a tensor of one value that a
    factory sized by an attribute (``h = x.new_zeros(B, self.hidden)``) and a layer reads
    (``self.wh(h)``), while no layer's output ever took its place. Run for two steps, the
    layer reads the state the first step computed, and the trace joins the state's width
    to that layer's output; from one step it cannot know, so the state keeps its width
    and the pruned model fails from the second step on."""
    if not ctx.states:
        return
    roots, dim_of, _, made_dims = layer_roots(ctx)
    own = made_dims[dim_of]
    made, read = roots[own], roots[~own]
    for labels, path, attr, line in ctx.states:
        state = ctx.space.find(labels).numpy()
        if np.isin(state, read).any() and not np.isin(state, made).any():
            owner = f"{path}.{attr}" if path else attr
            warn(
                f"{line}: a tensor sized by {owner} ({labels.numel()}) and of one value is "
                f"read by a layer, and no layer's output ever took its place: a recurrent "
                f"state the example ran for one step? Its width is kept, and a pruned model "
                f"that feeds it a layer's output at later steps fails; pass an example with "
                f"two or more steps")
            return


def _warn_untrained(ctx: TraceContext, handlers: Callable[[nn.Module], ModuleHandler | None],
                    exc: Exception) -> None:
    """Warn that the training-mode pass failed, naming the layers no pass ran."""
    names = list(unvisited(ctx, handlers))
    if not names:
        return
    shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more"
                                                     if len(names) > 3 else "")
    why = " ".join(str(exc).split())[:160]
    warn(
        f"{shown} never ran in eval mode, and the training-mode pass run to reach them failed "
        f"({type(exc).__name__}: {why}); they are not coupled with the channels they read, "
        "so the pruned model may fail in training mode. Pass example inputs the model runs "
        "on in training mode (a batch of 2 or more; the targets a detector's training "
        "forward needs), or ignore= the layers whose outputs they read")


def trace(
    model: nn.Module,
    example_inputs: ExampleInputs,
    lookup: Callable[[nn.Module], ModuleHandler | None],
    *,
    strict: bool = True,
) -> Trace:
    """Run ``model`` once and return its channel labels, module dims and param nodes.

    ``lookup(module)`` gives the handler of an atomic module or None. Inputs and outputs
    of the model keep their shape (their labels are blocked). The model runs in eval mode;
    if that leaves layers unvisited, or a layer's output unread, or the model's own code
    reads ``self.training`` (it may return more in training mode:
    :func:`~prunekit.graph.numbers.reads_training`), it runs once more in training mode
    (buffers restored), so that what only training runs, reads or returns (auxiliary heads,
    a branch summed in while training, FlowNet's coarser flows) is coupled or kept too, and
    the shapes of that pass are kept for the forward check.
    """
    check_traceable(model)
    ctx = TraceContext(model, strict)
    for path, tensor in walk_tensors(example_inputs, "input"):
        ctx.set_labels(tensor, fixed_shape(ctx.space, tensor.shape, f"model {path}"))
    recorder = ctx._calls.mode = Recorder(ctx._calls, ctx.record_op, size_read(ctx),
                                          ctx.writes)
    modules = [module for _, module in ctx._named_modules]
    handlers = opaque_scripts(lookup)
    train_shapes = train_data = None
    try:
        with recomputed_caches(modules), _functorch_refused():
            shapes = traced_pass(ctx, model, example_inputs, handlers, recorder, modules,
                                  training=False)
            data = recorder.data
            if unvisited_layers(ctx, handlers) or (ctx.unread and unread_outputs(ctx)) or \
                    reads_training(type(model)):
                with preserved_buffers(model):
                    try:
                        train_shapes = traced_pass(ctx, model, example_inputs, handlers,
                                                    recorder, modules, training=True)
                        train_data = recorder.data
                    except Exception as exc:  # best effort (one-sample BatchNorm, a
                        # detector that wants targets): what ran is coupled; without its
                        # shapes no training-mode check
                        train_shapes = None
                        _warn_untrained(ctx, handlers, exc)
        ctx.sizes.settle(ctx)
        for check in ctx.at_end:
            check()
        _mirror_layer_sizes(ctx)
        _warn_one_step(ctx)
        ctx.width_numbers.extend(ctx.sizes.numbers(ctx))
        if ctx.unseen:
            more = f" (and {len(ctx.unseen) - 1} more such tensors)" if len(ctx.unseen) > 1 \
                else ""
            warn(f"the trace read {ctx.unseen[0]}{more}; the coverage report "
                 f"names them")
    finally:  # also when the forward raised: no cycle keeps activations and labels alive
        ctx.writes.restore()  # the user's model as it was (an ActNorm's first-batch init)
        ctx._calls.mode = None
        ctx.sizes.close(modules)
        ctx._labels.clear()
        ctx._vectors.clear()
        ctx.param_views.clear()
        ctx.param_views.companions.clear()
        ctx._built.clear()
        ctx._made.clear()
        ctx.at_end.clear()
        ctx.states.clear()
        ctx.unread.clear()
    return Trace(ctx.space, ctx.modules, ctx.params, ctx.skipped_ops, ctx.bindings, shapes,
                 train_shapes, ctx.aligned, data, train_data, ctx.width_numbers,
                 frozenset(ctx._calls.entered), containers=ctx.containers, parents=ctx.parents,
                 written=names_of(model, ctx.writes.written()),
                 classes=frozenset(type(m) for _, m in ctx._named_modules),
                 follows=frozenset(ctx.follows))
