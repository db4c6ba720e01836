"""Layer adapter for ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN``: hidden units, all gates at once.

``hidden_size`` is one attribute for every layer and direction, so hidden unit ``j`` of
every layer and direction is one unit (the ``"hidden"`` dimension). Removing it cuts rows
``g·H + j`` of every gate ``g`` in ``weight_ih``/``weight_hh``/biases, column ``j`` of
``weight_hh`` and the matching input columns of the next layer (``j`` and ``H + j`` when
bidirectional). The first layer's input channels are the ``"in"`` dimension. LSTMs with
``proj_size`` are kept whole.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prunekit.graph.labels import consume, emit
from prunekit.graph.ops import OpNotMappable, tensors_in
from prunekit.graph.trace import ModuleCall, TraceContext
from prunekit.structured.adapters import ParamSlicer, WeightView, register_adapter, rows

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _names(rnn: nn.RNNBase) -> list[tuple[int, str]]:
    """(layer, suffix) of every layer and direction."""
    suffixes = ["", "_reverse"] if rnn.bidirectional else [""]
    return [(layer, sfx) for layer in range(rnn.num_layers) for sfx in suffixes]


def _per_unit(weight: Tensor, gates: int, size: int) -> Tensor:
    """Gate-stacked rows ``[gates·H, -1]`` regrouped as ``[H, -1]`` (all gates of unit j)."""
    return weight.reshape(gates, size, -1).transpose(0, 1).reshape(size, -1)


class RecurrentAdapter:
    """See the module docstring."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        rnn = call.module
        assert isinstance(rnn, nn.RNNBase)
        if getattr(rnn, "proj_size", 0):
            raise OpNotMappable("LSTM with proj_size is not supported yet")
        x = tensors_in(call.args[:1])[0]
        space = ctx.space
        ctx.record_dim(call.name, rnn, "in", consume(space, ctx.labels(x), -1))
        hidden = ctx.module_ids(call.name, rnn, "hidden", rnn.hidden_size)
        states = tensors_in((call.args[1:], call.kwargs))
        for state in states:  # given initial states carry the hidden units on their last dim
            space.union(hidden, consume(space, ctx.labels(state), -1))
        if isinstance(call.out, tuple):
            output, rest = call.out[0], call.out[1:]
        else:
            output, rest = call.out, ()
        if not isinstance(output, Tensor):
            raise OpNotMappable("packed sequences are not supported yet")
        directions = 2 if rnn.bidirectional else 1
        ctx.set_labels(output, emit(hidden.repeat(directions), -1, output.shape))
        for state in tensors_in(rest):
            ctx.set_labels(state, emit(hidden, -1, state.shape))

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        rnn = module
        assert isinstance(rnn, nn.RNNBase)
        size, gates = rnn.hidden_size, _GATES[rnn.mode]
        views = []
        for layer, sfx in _names(rnn):
            if dim == "in" and layer == 0:
                views.append(WeightView(rows(getattr(rnn, f"weight_ih_l0{sfx}"), 1), "weight", dim))
            if dim != "hidden":
                continue
            for kind in ("weight_ih", "weight_hh"):
                weight = getattr(rnn, f"{kind}_l{layer}{sfx}")
                views.append(WeightView(_per_unit(weight.detach(), gates, size), "weight", dim,
                                        None if weight.grad is None
                                        else _per_unit(weight.grad, gates, size)))
        return views

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        rnn = module
        assert isinstance(rnn, nn.RNNBase)
        size, gates = rnn.hidden_size, _GATES[rnn.mode]
        hidden, first_in = keep.get("hidden"), keep.get("in")
        directions = 2 if rnn.bidirectional else 1
        for layer, sfx in _names(rnn):
            if hidden is not None:
                rows_kept = torch.cat([hidden + g * size for g in range(gates)])
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    slicer.slice(rnn, f"{kind}_l{layer}{sfx}", 0, rows_kept)
                slicer.slice(rnn, f"weight_hh_l{layer}{sfx}", 1, hidden)
            if layer == 0 and first_in is not None:
                slicer.slice(rnn, f"weight_ih_l0{sfx}", 1, first_in)
            elif layer > 0 and hidden is not None:
                cols = torch.cat([hidden + d * size for d in range(directions)])
                slicer.slice(rnn, f"weight_ih_l{layer}{sfx}", 1, cols)
        if hidden is not None:
            rnn.hidden_size = int(hidden.numel())
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
