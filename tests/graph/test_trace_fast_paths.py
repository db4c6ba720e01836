"""The tracer's vector-form fast paths give exactly what the general label arithmetic gives.

Most CNN activations carry labels ``emit(vector, dim, shape)``; the tracer keeps those as
the vector and lets layers and pointwise/spatial/reduce/reshape/cat/glu handlers work on
it directly. Switching the fast paths off (``vector_of`` answering None) must change
nothing: not the ids, not the classes, not the blocks, not a module's recorded labels.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tests.structured.zoo import ZOO, ZooEntry
from torch import Tensor, nn

from prunekit.graph.labels import LabelSpace, emit
from prunekit.graph.ops import call_tensors, tensors_in
from prunekit.graph.passes import walk_modules
from prunekit.graph.trace import Trace, TraceContext, trace
from prunekit.structured.adapters import find_adapter


def _summary(result: Trace) -> dict[str, Any]:
    """Everything a trace hands on, with raw ids and their classes."""
    space = result.space

    def ids(labels: Tensor) -> tuple[list[int], list[int]]:
        return labels.reshape(-1).tolist(), space.find(labels).reshape(-1).tolist()

    return {
        "modules": {name: {dim: (ids(d.labels), d.root) for dim, d in rec.dims.items()}
                    for name, rec in result.modules.items()},
        "params": {name: (ids(p.ids), p.whole, sorted(p.sliced_axes),
                          None if p.selected is None else p.selected.tolist(),
                          {axis: (ids(lab), root) for axis, (lab, root) in p.axes.items()})
                   for name, p in result.params.items()},
        "classes": space.find(torch.arange(space.size)).tolist(),
        "blocked": space.blocked_roots(),
        "reasons": dict(space.block_reasons),
        "skipped": list(result.skipped_ops),
        "bindings": {key: ids(lab) for key, lab in result.bindings.items()},
        "shapes": list(result.output_shapes),
    }


def _general_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TraceContext, "vector_of", lambda self, tensor: None)


def _fast_matches_general(model: nn.Module, x: Tensor,
                          monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The trace summary with the fast paths, asserted equal to the one without."""
    fast = _summary(trace(model, x, find_adapter))
    with monkeypatch.context() as patch:
        _general_only(patch)
        general = _summary(trace(model, x, find_adapter))
    assert fast == general
    return fast


def count_vector_hits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make ``TraceContext.vector_of`` count the lookups that find a vector form: the
    returned one-element list holds the count."""
    hits = [0]
    original = TraceContext.vector_of

    def counting(self: TraceContext, tensor: Tensor) -> tuple[int, Tensor] | None:
        found = original(self, tensor)
        hits[0] += found is not None
        return found

    monkeypatch.setattr(TraceContext, "vector_of", counting)
    return hits


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_zoo_traces_match_the_general_path(entry: ZooEntry,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model, inputs = entry.build(), entry.example_inputs()
    fast = _summary(trace(model, inputs, find_adapter, strict=False))
    with monkeypatch.context() as patch:
        _general_only(patch)
        general = _summary(trace(model, inputs, find_adapter, strict=False))
    assert fast == general


class _EveryFastPath(nn.Module):
    """conv/BN/ReLU, a residual add, SE and spatial gates, an untracked mask, glu, chunk,
    cat, pooling, permute/transpose, mean, flatten, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.wide = nn.Conv2d(16, 32, 1)
        self.side = nn.Conv2d(16, 8, 1)
        self.gate = nn.Conv2d(16, 1, 1)
        self.norm = nn.GroupNorm(4, 24)
        self.head = nn.Linear(24 * 4 * 4, 10)
        self.tail = nn.Linear(24, 5)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x)
        x = F.relu(self.conv(x)) + x
        x = x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = x * torch.sigmoid(self.gate(x)) * torch.ones(x.shape[-1])  # spatial gate, mask
        x = torch.cat([F.glu(self.wide(x), dim=1), self.side(x)], dim=1)
        first, second = x.chunk(2, dim=1)  # the halves shrink alike
        x = torch.cat([first * second, second], dim=1)
        x = F.max_pool2d(self.norm(x), 2)
        x = F.adaptive_avg_pool2d(x, 4)
        y = x.permute(0, 2, 3, 1).transpose(1, 2).mean((1, 2))  # channels last, then kept
        return self.head(torch.flatten(x, 1)), self.tail(y)


def test_every_fast_path_is_taken_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _EveryFastPath().eval(), torch.randn(2, 3, 16, 16)
    with monkeypatch.context() as patch:
        hits = count_vector_hits(patch)
        trace(model, x, find_adapter)
    assert hits[0] >= 20
    _fast_matches_general(model, x, monkeypatch)
    # the SE gate couples fc2's outputs with the channels it scales
    dims = trace(model, x, find_adapter)
    space = dims.space
    gate = space.find(dims.modules["fc2"].dims["out"].labels)
    assert gate.tolist() == space.find(dims.modules["conv"].dims["out"].labels).tolist()


def test_vector_labels_materialise_as_emit() -> None:
    ctx = TraceContext(nn.Identity(), strict=True)
    t = torch.zeros(2, 3, 4)
    vector = ctx.space.new_ids(3)
    ctx.set_vector(t, vector, 1)
    assert ctx.is_tracked(t)
    assert ctx.vector_of(t) is not None
    assert torch.equal(ctx.labels(t), emit(vector, 1, t.shape))
    assert ctx.consume(t, 1).tolist() == vector.tolist()
    # a vector that does not fit the dim is stored as its emitted label tensor
    u = torch.zeros(2, 3, 4)
    ctx.set_vector(u, ctx.space.new_ids(1), 2)
    assert ctx.vector_of(u) is None
    assert ctx.labels(u).shape == u.shape
    # set_labels replaces a vector form
    ctx.set_labels(t, torch.zeros(2, 3, 4, dtype=torch.long))
    assert ctx.vector_of(t) is None
    assert int(ctx.labels(t).sum()) == 0


def test_broadcast_label_tensors_are_recognised_as_vectors() -> None:
    ctx = TraceContext(nn.Identity(), strict=True)
    t, u, w = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)
    vector = ctx.space.new_ids(4)
    ctx.set_labels(t, emit(vector, 2, t.shape))
    found = ctx.vector_of(t)
    assert found is not None and found[0] == 2 and found[1].tolist() == vector.tolist()
    ctx.set_labels(u, torch.arange(24).reshape(2, 3, 4))  # varies along three dims
    assert ctx.vector_of(u) is None
    ctx.set_labels(w, torch.full((), 5).expand(2, 3, 4))  # one label: no dim to pick
    assert ctx.vector_of(w) is None


def test_parameters_never_take_the_vector_form() -> None:
    model = nn.Linear(3, 3)
    ctx = TraceContext(model, strict=True)
    ctx.set_vector(model.weight, ctx.space.new_ids(3), 0)
    assert ctx.vector_of(model.weight) is None


class _ConstantChannels(nn.Module):
    """A depthwise conv of the model input: its four channels carry one class, so a
    one-channel gate is joined with them rather than dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.spread = nn.Conv2d(2, 4, 3, padding=1, groups=2)
        self.gate = nn.Conv2d(4, 1, 1)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.spread(x)
        return self.out(x * torch.sigmoid(self.gate(x)))


def test_gate_against_constant_channels_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _ConstantChannels().eval(), torch.randn(2, 2, 8, 8)
    _fast_matches_general(model, x, monkeypatch)


class _InPlaceReshape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        y.unsqueeze_(2)  # [B, 4, 1, H, W]: the labels set before must follow the replay
        return self.head(y)


def test_in_place_reshape_of_vector_labels_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _InPlaceReshape().eval(), torch.randn(2, 3, 4, 4)
    fast = _fast_matches_general(model, x, monkeypatch)
    assert fast["modules"]["head"]["in"][0][1] == fast["modules"]["conv"]["out"][0][1]


class _TokensAndParams(nn.Module):
    """Tokens combined with param nodes: a positional embedding (either side), a per-channel
    scale, a per-token bias (broadcast along the channels: the general path) and a class
    token whose cat makes the labels vary along two dims until the embedding joins them,
    and a mean over the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 5, 8))
        self.scale = nn.Parameter(torch.ones(8))
        self.token_bias = nn.Parameter(torch.zeros(5, 1))
        self.pos2 = nn.Parameter(torch.randn(5, 8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos
        x = self.scale * self.norm(x)
        x = self.pos2 + x
        x = x + self.token_bias
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)  # RMSNorm: reduces C
        return self.head(x)


def test_param_nodes_against_vector_labels_match(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _TokensAndParams().eval(), torch.randn(2, 4, 3)
    fast = _fast_matches_general(model, x, monkeypatch)
    # the embedding's channels, the class token's, the scale's and both embeddings' columns
    # are one set of classes
    classes = fast["modules"]["embed"]["out"][0][1]
    assert fast["modules"]["head"]["in"][0][1] == classes
    space = trace(model, x, find_adapter)
    assert space.space.find(space.params["pos2"].ids)[3].tolist() == classes


def test_module_walk_is_named_modules() -> None:
    """The tracer's own module walk lists what ``named_modules(remove_duplicate=False)``
    does, shared modules at every path, and defers to a module's own override."""

    class Listed(nn.Sequential):
        def named_modules(self, *args: Any, **kwargs: Any) -> Any:
            yield "only", self

    shared = nn.ReLU()
    for model in [entry.build() for entry in ZOO] + [
            nn.Sequential(shared, nn.Sequential(shared, nn.Linear(2, 2))),
            nn.Sequential(nn.ReLU(), Listed(nn.ReLU()))]:
        assert walk_modules(model) == list(model.named_modules(remove_duplicate=False))
    assert len(walk_modules(nn.Sequential(shared, nn.Sequential(shared)))) == 4


def test_find_of_known_roots_is_fresh_after_a_union() -> None:
    """``find`` answers a vector it returned (or ``new_ids`` made) with itself until a union
    links roots; after one it finds again."""
    space = LabelSpace()
    a, b = space.new_ids(3), space.new_ids(3)
    assert space.find(a) is a  # fresh ids are their own roots
    roots = space.find(b[[2, 1, 0]])
    assert space.find(roots) is roots and roots.tolist() == [6, 5, 4]
    space.union(a, b)
    assert space.find(b).tolist() == [1, 2, 3]
    assert space.find(roots).tolist() == [3, 2, 1]  # not the stale answer [6, 5, 4]
    space.block(a[:1], "kept")  # a block links roots too
    assert space.find(space.find(a)).tolist() == [space.find(a)[0].item(), 2, 3]
    assert space.find(a)[0].item() == 1 and len(space.blocked_roots()) == 1


class _NoRootsMemo(LabelSpace):
    """A label space that finds every vector again (its known-roots shortcut off)."""

    def find(self, labels: Tensor) -> Tensor:
        self._roots.clear()
        return super().find(labels)


def _same_without_roots_memo(model: nn.Module, inputs: Any,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    with_memo = _summary(trace(model, inputs, find_adapter, strict=False))
    with monkeypatch.context() as patch:
        patch.setattr(sys.modules["prunekit.graph.trace"], "LabelSpace", _NoRootsMemo)
        without = _summary(trace(model, inputs, find_adapter, strict=False))
    assert with_memo == without


@pytest.mark.parametrize("seed", range(0, 200, 5))
def test_roots_shortcut_changes_no_trace(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.graph.test_trace_fuzz import _build

    _same_without_roots_memo(*_build(seed), monkeypatch)


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_roots_shortcut_changes_no_zoo_trace(entry: ZooEntry,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _same_without_roots_memo(entry.build(), entry.example_inputs(), monkeypatch)


def test_call_tensors_is_tensors_in_of_the_pair() -> None:
    """An op's tensors: the args' (nested too), then the kwargs values', as the pytree walk of
    ``(args, kwargs)`` lists them."""
    a, b, c, d = (torch.zeros(i + 1) for i in range(4))
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((a, 2, None), {}),
        ((a, [b, (c, 1.0)], slice(1)), {"weight": d}),
        ((), {"input": a, "other": {"x": b, "y": [c]}, "alpha": 2}),
        ((a,), {"inplace": False}),
    ]
    for args, kwargs in calls:
        got = call_tensors(args, kwargs)
        assert [id(t) for t in got] == [id(t) for t in tensors_in((args, kwargs))]
    assert [id(t) for t in call_tensors(*calls[1])] == [id(a), id(b), id(c), id(d)]
