"""Layer adapters for ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their cells: hidden units, all
gates at once.

``hidden_size`` is one attribute for every layer and direction, so hidden unit ``j`` of
every layer and direction is one unit (the ``"hidden"`` dimension). Removing it cuts rows
``g·H + j`` of every gate ``g`` in ``weight_ih``/``weight_hh``/biases, column ``j`` of
``weight_hh`` and the matching input columns of the next layer (``j`` and ``H + j`` when
bidirectional). The first layer's input channels are the ``"in"`` dimension.

An LSTM with ``proj_size = P`` emits ``h = weight_hr · (o ⊙ tanh(c))``: the cell units
(``"hidden"``, width of ``c``) are cut in the gate rows and in ``weight_hr``'s columns;
the projection units (``"proj"``, width of the output and of ``h``) in ``weight_hr``'s rows,
``weight_hh``'s columns and the next layer's input columns (``j`` and ``P + j``). Torch
needs ``proj_size < hidden_size`` (with equal sizes its kernel takes the LSTM for one
without projections), so a cut that would leave ``proj_size >= hidden_size`` is refused
when applied: like any cut that breaks the forward check, ``strict=True`` names its groups
in the error and ``strict=False`` keeps them whole. A uniform ``ratio`` keeps the order
except where the sizes are within a unit or two of each other.

The cells (``nn.LSTMCell``, ``nn.GRUCell``, ``nn.RNNCell``) that users step through a
loop have the same two dimensions: ``"in"`` (the input's last dim) and ``"hidden"``
(gate rows ``g·H + j``, column ``j`` of ``weight_hh``, the given state's last dim and the
returned state's). A loop that feeds the returned state back joins each step's state
with the same units.

A :class:`~torch.nn.utils.rnn.PackedSequence` input is read through its ``data``
``[sum(lengths), F]`` and the packed output's ``data`` carries the output units (the
packing ops are mapped in :mod:`prunekit.graph.ops_packed`). Given initial states carry
the output units (``h0``) and the cell units (an LSTM's ``c0``) on their last dim.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from prunekit.errors import PrunekitError
from prunekit.graph.labels import consume, emit
from prunekit.graph.ops import OpNotMappable, tensors_in
from prunekit.graph.trace import ModuleCall, TraceContext
from prunekit.structured.adapters import (
    ParamSlicer,
    WeightView,
    grad_rows,
    register_adapter,
    rows,
)

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_CELL_GATES: dict[type[nn.Module], int] = {nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}


class ProjectionWidthError(PrunekitError):
    """A cut would leave an LSTM's ``proj_size >= hidden_size``, which torch cannot run.

    Not a ValueError on purpose: applying a plan reports those as a plan that does not fit
    the model, while this is a cut that breaks it (prune's forward-check repair handles it).
    """


def _names(rnn: nn.RNNBase) -> list[tuple[int, str]]:
    """(layer, suffix) of every layer and direction."""
    suffixes = ["", "_reverse"] if rnn.bidirectional else [""]
    return [(layer, sfx) for layer in range(rnn.num_layers) for sfx in suffixes]


def _per_unit(weight: Tensor, gates: int, size: int) -> Tensor:
    """Gate-stacked rows ``[gates·H, -1]`` regrouped as ``[H, -1]`` (all gates of unit j)."""
    return weight.reshape(gates, size, -1).transpose(0, 1).reshape(size, -1)


def _unit_views(weights: tuple[Tensor, ...], gates: int, size: int, dim: str
                ) -> list[WeightView]:
    """Weight views of the hidden units: all gates' rows of unit ``j`` together."""
    return [WeightView(_per_unit(w.detach(), gates, size), "weight", dim,
                       None if w.grad is None else _per_unit(w.grad, gates, size))
            for w in weights]


def _gate_rows(units: Tensor, gates: int, size: int) -> Tensor:
    """The rows ``g·H + j`` of every gate ``g`` for the kept units ``j``."""
    return torch.cat([units + g * size for g in range(gates)])


def _data(value: object) -> Tensor:
    """The tensor a recurrent layer reads or writes: a PackedSequence's ``data``."""
    if isinstance(value, PackedSequence):
        return value.data
    if not isinstance(value, Tensor):
        raise OpNotMappable(f"expected a tensor or a PackedSequence, got {type(value).__name__}")
    return value


class RecurrentAdapter:
    """See the module docstring."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        rnn = call.module
        assert isinstance(rnn, nn.RNNBase)
        x = _data(call.args[0] if call.args else call.kwargs.get("input"))
        space = ctx.space
        ctx.record_dim(call.name, rnn, "in", consume(space, ctx.labels(x), -1))
        hidden = ctx.module_ids(call.name, rnn, "hidden", rnn.hidden_size)
        proj_size = getattr(rnn, "proj_size", 0)
        made = ctx.module_ids(call.name, rnn, "proj", proj_size) if proj_size else hidden
        # states in the order (h, c): h carries the output units, an LSTM's c the cell units
        state_units = (made, hidden)
        hx = call.args[1] if len(call.args) > 1 else call.kwargs.get("hx")
        for state, units in zip(tensors_in((hx,)), state_units, strict=False):
            ctx.join_read(units, consume(space, ctx.labels(state), -1),
                          f"the state of {call.name!r}")
        if isinstance(call.out, tuple) and not isinstance(call.out, PackedSequence):
            output, rest = _data(call.out[0]), call.out[1:]
        else:
            output, rest = _data(call.out), ()
        directions = 2 if rnn.bidirectional else 1
        ctx.set_labels(output, emit(made.repeat(directions), -1, output.shape))
        for state, units in zip(tensors_in(rest), state_units, strict=False):
            ctx.set_labels(state, emit(units, -1, state.shape))

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        rnn = module
        assert isinstance(rnn, nn.RNNBase)
        size, gates = rnn.hidden_size, _GATES[rnn.mode]
        views = []
        for layer, sfx in _names(rnn):
            if dim == "in" and layer == 0:
                views.append(WeightView(rows(getattr(rnn, f"weight_ih_l0{sfx}"), 1), "weight", dim))
            elif dim == "proj":  # the projection's rows make the output units
                weight = getattr(rnn, f"weight_hr_l{layer}{sfx}")
                views.append(WeightView(rows(weight, 0), "weight", dim, grad_rows(weight, 0)))
            elif dim == "hidden":
                views += _unit_views((getattr(rnn, f"weight_ih_l{layer}{sfx}"),
                                      getattr(rnn, f"weight_hh_l{layer}{sfx}")),
                                     gates, size, dim)
        return views

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        rnn = module
        assert isinstance(rnn, nn.RNNBase)
        size, gates = rnn.hidden_size, _GATES[rnn.mode]
        proj_size = getattr(rnn, "proj_size", 0)
        hidden, proj, first_in = keep.get("hidden"), keep.get("proj"), keep.get("in")
        made, made_size = (proj, proj_size) if proj_size else (hidden, size)
        if proj_size:
            new_size = size if hidden is None else int(hidden.numel())
            new_proj = proj_size if proj is None else int(proj.numel())
            if new_proj >= new_size:
                raise ProjectionWidthError(
                    f"the cut would leave LSTM proj_size={new_proj} >= hidden_size={new_size}, "
                    f"which torch cannot run; keep more hidden units (a lower ratio or a "
                    f"higher min_keep) or pass strict=False to keep this group whole"
                )
        directions = 2 if rnn.bidirectional else 1
        for layer, sfx in _names(rnn):
            if hidden is not None:
                rows_kept = _gate_rows(hidden, gates, size)
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    slicer.slice(rnn, f"{kind}_l{layer}{sfx}", 0, rows_kept)
                if proj_size:
                    slicer.slice(rnn, f"weight_hr_l{layer}{sfx}", 1, hidden)
            if made is not None:
                slicer.slice(rnn, f"weight_hh_l{layer}{sfx}", 1, made)
                if proj_size:
                    slicer.slice(rnn, f"weight_hr_l{layer}{sfx}", 0, made)
            if layer == 0 and first_in is not None:
                slicer.slice(rnn, f"weight_ih_l0{sfx}", 1, first_in)
            elif layer > 0 and made is not None:
                cols = torch.cat([made + d * made_size for d in range(directions)])
                slicer.slice(rnn, f"weight_ih_l{layer}{sfx}", 1, cols)
        if hidden is not None:
            rnn.hidden_size = int(hidden.numel())
        if proj_size and proj is not None:
            rnn.proj_size = int(proj.numel())
        if first_in is not None:
            rnn.input_size = int(first_in.numel())

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        return None

    def sync(self, module: nn.Module) -> None:
        rnn = module
        assert isinstance(rnn, nn.RNNBase)
        rnn._init_flat_weights()


_ADAPTER = RecurrentAdapter()
for _cls in (nn.LSTM, nn.GRU, nn.RNN):
    register_adapter(_cls, _ADAPTER)


class RecurrentCellAdapter:
    """``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell`` (see the module docstring)."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        cell = call.module
        assert isinstance(cell, nn.RNNCellBase)
        x = call.args[0] if call.args else call.kwargs.get("input")
        if not isinstance(x, Tensor):
            raise OpNotMappable(f"expected a tensor input, got {type(x).__name__}")
        space = ctx.space
        ctx.record_dim(call.name, cell, "in", consume(space, ctx.labels(x), -1))
        hidden = ctx.module_ids(call.name, cell, "hidden", cell.hidden_size)
        hx = call.args[1] if len(call.args) > 1 else call.kwargs.get("hx")
        for state in tensors_in((hx,)):  # h (and an LSTM cell's c): the hidden units
            ctx.join_read(hidden, consume(space, ctx.labels(state), -1),
                          f"the state of {call.name!r}")
        for state in tensors_in(call.out):
            ctx.set_labels(state, emit(hidden, -1, state.shape))

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        cell = module
        assert isinstance(cell, nn.RNNCellBase)
        if dim == "in":
            return [WeightView(rows(cell.weight_ih, 1), "weight", dim,
                               grad_rows(cell.weight_ih, 1))]
        return _unit_views((cell.weight_ih, cell.weight_hh), _CELL_GATES[type(cell)],
                           cell.hidden_size, dim)

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        cell = module
        assert isinstance(cell, nn.RNNCellBase)
        hidden, first_in = keep.get("hidden"), keep.get("in")
        if hidden is not None:
            rows_kept = _gate_rows(hidden, _CELL_GATES[type(cell)], cell.hidden_size)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                if getattr(cell, name) is not None:
                    slicer.slice(cell, name, 0, rows_kept)
            slicer.slice(cell, "weight_hh", 1, hidden)
            cell.hidden_size = int(hidden.numel())
        if first_in is not None:
            slicer.slice(cell, "weight_ih", 1, first_in)
            cell.input_size = int(first_in.numel())

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        return None

    def sync(self, module: nn.Module) -> None:
        pass


_CELL_ADAPTER = RecurrentCellAdapter()
for _cell in _CELL_GATES:
    register_adapter(_cell, _CELL_ADAPTER)
