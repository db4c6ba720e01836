"""Tracing and dependency groups: labels, index mapping, blocking reasons, extension seams."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError, UnsupportedOpError
from prunekit.graph import OpCall, register_op
from prunekit.graph.dependency import build_groups
from prunekit.graph.labels import NEUTRAL, LabelSpace, consume
from prunekit.graph.trace import TraceContext, trace
from prunekit.structured import find_adapter


def _groups(model: nn.Module, x: object, **kw: object):  # type: ignore[no-untyped-def]
    traced = trace(model, x, find_adapter, strict=True)
    return build_groups(model, traced, **kw)  # type: ignore[arg-type]


def test_label_space_unions_and_blocks() -> None:
    space = LabelSpace()
    ids = space.new_ids(6)
    space.union(ids[:3], ids[3:])
    assert torch.equal(space.find(ids[3:]), space.find(ids[:3]))
    space.union(ids[:1], torch.tensor([NEUTRAL]))  # NEUTRAL never joins
    assert int(space.find(torch.tensor([NEUTRAL]))[0]) == NEUTRAL
    space.block(ids[1:2], "because")
    blocked = space.blocked_roots()
    assert blocked[int(space.find(ids[4:5])[0])] == "because"
    assert int(space.find(ids[0:1])[0]) not in blocked


def test_label_space_union_of_big_and_broadcast_labels() -> None:
    space = LabelSpace()
    a, b = space.new_ids(128), space.new_ids(128)
    # materialised and bigger than the threshold: rows repeat, so only 128 pairs are joined
    space.union(a.expand(64, 128).clone(), b.expand(64, 128).clone())
    assert torch.equal(space.find(a), space.find(b))
    c = space.new_ids(4)
    wide = c.reshape(1, 4, 1).expand(2, 4, 9)  # a broadcast view, as layers emit
    found = space.find(wide)
    assert found.shape == (2, 4, 9) and found.stride() == (0, 1, 0)
    space.union(wide, a[:4].reshape(1, 4, 1))
    assert torch.equal(space.find(c), space.find(a[:4]))
    assert not torch.equal(space.find(c), space.find(a[4:8]))


@pytest.mark.parametrize("seed", range(4))
def test_label_space_union_matches_a_plain_union_find(seed: int) -> None:
    # repeated and chained pairs (one root linked to several others in one call) must
    # come out as the same classes as a one-pair-at-a-time union-find
    gen = torch.Generator().manual_seed(seed)
    space = LabelSpace()
    ids = space.new_ids(300)
    parent = list(range(int(ids.max()) + 1))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for size in (1, 5, 40, 400, 40):
        a = ids[torch.randint(0, 300, (size,), generator=gen)]
        b = ids[torch.randint(0, 300, (size,), generator=gen)]
        space.union(a, b)
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = find(x), find(y)
            parent[max(rx, ry)] = min(rx, ry)
    assert space.find(ids).tolist() == [find(i) for i in ids.tolist()]
    assert space.find(ids).tolist() != ids.tolist()


def test_consume_joins_positions_of_one_channel() -> None:
    space = LabelSpace()
    a, b = space.new_ids(2), space.new_ids(2)
    labels = torch.stack([a, b], dim=1)  # channel 0 holds a[0] and b[0]
    vector = consume(space, labels, 0)
    assert vector.shape == (2,)
    assert int(space.find(a[:1])[0]) == int(space.find(b[:1])[0])


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(10, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.cat([self.b(x), self.a(x)], dim=1))


def test_concat_consumer_maps_offsets_and_spans_two_groups() -> None:
    model = _Concat()
    graph = _groups(model, torch.randn(1, 3, 4, 4))
    assert len(graph.groups) == 2
    units = {(m.name, m.dim): m.units for m in graph.members}
    consumer = units[("out", "in")]
    assert torch.equal(consumer[:6], units[("b", "out")])
    assert torch.equal(consumer[6:], units[("a", "out")])
    for group in graph.groups:
        assert any(m.name == "out" and m.dim == "in" for m in group.members)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 1), nn.Conv2d(5, 5, 1)
        self.bn = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.a(x)
        y = y + self.bn(self.b(y))
        return self.fc(y.mean((2, 3)))


def test_residual_partners_share_one_group() -> None:
    graph = _groups(_Residual(), torch.randn(1, 3, 4, 4))
    assert len(graph.groups) == 1
    names = {(m.name, m.dim) for m in graph.groups[0].members}
    assert {("a", "out"), ("b", "out"), ("bn", "channels"), ("b", "in"), ("fc", "in")} <= names


def test_flatten_block_maps_channel_to_contiguous_features() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Flatten(), nn.Linear(3 * 4, 2))
    graph = _groups(model, torch.randn(1, 1, 2, 2))
    units = {(m.name, m.dim): m.units for m in graph.members}
    conv, fc = units[("0", "out")], units[("2", "in")]
    assert torch.equal(fc, conv.repeat_interleave(4))


def test_output_layer_and_inputs_are_blocked_with_reasons() -> None:
    graph = _groups(_Residual(), torch.randn(1, 3, 4, 4))
    fc_out = next(m for m in graph.members if m.name == "fc" and m.dim == "out")
    assert "model output" in graph.blocked[int(fc_out.units[0])]
    a_in = next(m for m in graph.members if m.name == "a" and m.dim == "in")
    assert "model input" in graph.blocked[int(a_in.units[0])]


def test_ignore_blocks_out_dim_only() -> None:
    model = _Residual()
    graph = _groups(model, torch.randn(1, 3, 4, 4), ignore=[model.a])
    assert graph.groups == ()
    with pytest.raises(ConfigError, match="ignore"):
        _groups(model, torch.randn(1, 3, 4, 4), ignore=["a"])


def test_python_control_flow_and_eval_mode_restored() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 6)
            self.bn = nn.BatchNorm1d(6)
            self.out = nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x) if x.shape[0] > 1 else self.b(x)
            return self.out(self.bn(h))

    model = Branchy().train()
    stats = model.bn.running_mean.clone()
    graph = _groups(model, torch.randn(3, 4))
    assert model.training and torch.equal(model.bn.running_mean, stats)
    assert "b" not in {m.name for m in graph.members}


def test_unknown_op_error_and_registered_handler() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(torch.special.bessel_j0(self.a(x)))

    with pytest.raises(UnsupportedOpError, match=r"bessel_j0.*model's own forward"):
        _groups(Odd(), torch.randn(2, 4))

    def passthrough(ctx: TraceContext, call: OpCall) -> None:
        ctx.set_labels(call.out, ctx.labels(call.args[0]))

    register_op(["special_bessel_j0"], passthrough)
    graph = _groups(Odd(), torch.randn(2, 4))
    assert len(graph.groups) == 1


def test_kwargs_inputs_and_nested_outputs() -> None:
    class Dicty(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 2), nn.Linear(6, 3)

        def forward(self, x: Tensor, scale: Tensor) -> dict[str, tuple[Tensor, ...]]:
            h = self.a(x) * scale
            return {"out": (self.b(h), self.c(h))}

    graph = _groups(Dicty(), {"x": torch.randn(2, 4), "scale": torch.tensor(2.0)})
    assert len(graph.groups) == 1 and graph.groups[0].size == 6


def test_registries_reject_bad_registrations() -> None:
    from prunekit.structured import register_adapter
    from prunekit.structured.adapters_linear import LinearAdapter

    with pytest.raises(ConfigError, match="already"):
        register_op(["add"], lambda ctx, call: None)
    with pytest.raises(TypeError, match="register_op"):
        register_op([3], lambda ctx, call: None)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="already"):
        register_adapter(nn.Linear, LinearAdapter())
    with pytest.raises(TypeError, match=r"nn\.Module"):
        register_adapter(int, LinearAdapter())  # type: ignore[arg-type]


def test_sort_factories_and_topk() -> None:
    class Ranker(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)  # [B, T, 6]
            order = h.sum(-1).argsort(dim=-1)  # rank tokens, not channels
            h = h + h.new_zeros(h.shape)
            kept = torch.topk(h, 2, dim=1).values  # top tokens per channel
            return self.b(kept + h[:, :2]) + order[:, :2, None] * 0

    graph = _groups(Ranker(), torch.randn(2, 5, 4))
    assert len(graph.groups) == 1 and graph.groups[0].size == 6


def test_sorted_id_lookups_match_isin_and_handle_empty_sets() -> None:
    from prunekit.graph.labels import in_sorted, positions_in

    values = torch.tensor([7, 3, 9, 3, 1])
    ids = torch.tensor([3, 4, 7])
    assert in_sorted(values, ids).tolist() == torch.isin(values, ids).tolist()
    rows, pos = positions_in(values, ids, offset=10)
    assert rows.tolist() == [0, 1, 3] and pos.tolist() == [12, 10, 10]
    assert not in_sorted(values, torch.zeros(0, dtype=torch.long)).any()
    assert positions_in(values, torch.zeros(0, dtype=torch.long))[0].numel() == 0


def _no_trace_hooks_left(model: nn.Module) -> bool:
    hooks = torch.nn.modules.module
    return (not hooks._global_forward_hooks and not hooks._global_forward_pre_hooks
            and all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
            and torch._C._len_torch_function_stack() == 0)


def test_trace_that_fails_removes_its_hooks_and_mode() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(5, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(self.a(x))  # 6 features into a 5-input layer: raises inside b

    model = Bad().train()
    with pytest.raises(RuntimeError, match="shapes"):
        _groups(model, torch.randn(2, 4))
    assert _no_trace_hooks_left(model) and model.training

    # a module with a hook of its own gets per-module trace hooks: those go too
    handle = model.a.register_forward_hook(lambda mod, args, out: out)
    with pytest.raises(RuntimeError, match="shapes"):
        _groups(model, torch.randn(2, 4))
    assert list(model.a._forward_hooks) == [handle.id]
    handle.remove()
    assert _no_trace_hooks_left(model)

    # a lookup that raises half-way through registration (a, with a hook of its own, has
    # its trace hooks already) leaves none of them behind
    own = model.a.register_forward_hook(lambda mod, args, out: out)

    def failing_lookup(module: nn.Module) -> None:
        if module is model.b:
            raise ValueError("lookup failed")
        return None

    with pytest.raises(ValueError, match="lookup failed"):
        trace(model, torch.randn(2, 4), failing_lookup)  # type: ignore[arg-type]
    assert list(model.a._forward_hooks) == [own.id]
    own.remove()
    assert _no_trace_hooks_left(model)
