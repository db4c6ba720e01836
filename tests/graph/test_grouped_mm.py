"""Mixture-of-experts blocks whose experts' weights are slices of 3-D parameters, run as
Transformers 5 runs them: grouped matrix products (``F.grouped_mm``, its default), a loop of
``F.linear`` over the experts ("eager"), ``torch.bmm`` on the weights picked per token
("batched_mm"), or, as Llama 4 runs them, ``torch.bmm`` of every expert's whole weights on
every token ("dense"). Index ``j`` of the intermediate (or hidden) axis is cut in every
expert alike.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import UnsupportedOpError
from prunekit.structured import replay_plan

HIDDEN, INTER, EXPERTS, TOP_K = 16, 32, 4, 2


class _GroupedMoE(nn.Module):
    """A router, top-k, and experts as two grouped products, written as Transformers'
    ``grouped_mm_experts_forward``: weights ``[E, out, in]`` read through
    ``transpose(-2, -1)``, or ``[E, in, out]`` read as they are (``stored_in_out``). Every
    instance has the same weights."""

    def __init__(self, stored_in_out: bool = False) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.stored_in_out = stored_in_out
        self.num_experts, self.top_k = EXPERTS, TOP_K
        self.router = nn.Linear(HIDDEN, EXPERTS, bias=False)
        self.router.weight.data = torch.randn(EXPERTS, HIDDEN, generator=generator)
        gate_up = torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=generator) / HIDDEN ** 0.5
        down = torch.randn(EXPERTS, HIDDEN, INTER, generator=generator) / INTER ** 0.5
        if stored_in_out:
            gate_up, down = gate_up.mT.contiguous(), down.mT.contiguous()
        self.gate_up_proj = nn.Parameter(gate_up)
        self.down_proj = nn.Parameter(down)

    def _experts(self, rows: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
        stacked = weight if self.stored_in_out else weight.transpose(-2, -1)
        return F.grouped_mm(rows, stacked, offs=offs)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, hidden = x.shape
        flat = x.reshape(-1, hidden)
        weights, index = self.router(flat).softmax(-1).topk(self.top_k, dim=-1)
        expert_ids, perm = torch.sort(index.reshape(-1))
        rows = flat[perm // self.top_k]
        counts = torch.histc(expert_ids.float(), bins=self.num_experts, min=0,
                             max=self.num_experts - 1)
        offs = torch.cumsum(counts, dim=0, dtype=torch.int32)
        gate, up = self._experts(rows, self.gate_up_proj, offs).chunk(2, dim=-1)
        out = self._experts(F.silu(gate) * up, self.down_proj, offs)
        out = out * weights.reshape(-1)[perm].unsqueeze(-1)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel())
        return out[inverse].view(batch * tokens, self.top_k, hidden).sum(dim=1).view(
            batch, tokens, hidden)


class _LoopedMoE(_GroupedMoE):
    """The same block, its experts run as Transformers' ``eager`` (one ``F.linear`` per
    expert hit, or ``x @ W[e]`` for weights stored ``[E, in, out]``; ``index_add_`` into the
    output), ``batched_mm`` (``torch.bmm`` on the weights picked for each token) or, as Llama 4
    runs them, ``dense`` (``torch.bmm`` of every expert's whole weights on every token, the
    router's scores scaled in)."""

    def __init__(self, stored_in_out: bool = False, mode: str = "eager") -> None:
        super().__init__(stored_in_out)
        self.mode = mode

    def _one(self, rows: Tensor, weight: Tensor) -> Tensor:
        return rows @ weight if self.stored_in_out else F.linear(rows, weight)

    def _whole(self, weight: Tensor) -> Tensor:
        return weight if self.stored_in_out else weight.transpose(-2, -1)

    def _picked(self, rows: Tensor, weights: Tensor) -> Tensor:
        if self.stored_in_out:
            return torch.bmm(rows.unsqueeze(1), weights).squeeze(1)
        return torch.bmm(weights, rows.unsqueeze(-1)).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, hidden = x.shape
        flat = x.reshape(-1, hidden)
        weights, index = self.router(flat).softmax(-1).topk(self.top_k, dim=-1)
        if self.mode == "dense":  # Llama 4: every expert on every token, scaled by its score
            scores = torch.zeros(flat.shape[0], self.num_experts).scatter(1, index, weights)
            rows = flat.expand(self.num_experts, -1, -1) * scores.t()[..., None]
            gate, up = torch.bmm(rows, self._whole(self.gate_up_proj)).chunk(2, dim=-1)
            out = torch.bmm(F.silu(gate) * up, self._whole(self.down_proj))
            return out.sum(dim=0).view(x.shape)
        if self.mode == "batched":
            ids, rows = index.reshape(-1), flat.repeat_interleave(self.top_k, dim=0)
            gate, up = self._picked(rows, self.gate_up_proj[ids]).chunk(2, dim=-1)
            out = self._picked(F.silu(gate) * up, self.down_proj[ids]) * weights.reshape(-1, 1)
            return out.view(batch * tokens, self.top_k, hidden).sum(dim=1).view(x.shape)
        out = torch.zeros_like(flat)
        for expert in index.unique():  # 0-d tensors, as Transformers' expert_hit rows
            token, slot = torch.where(index == expert)
            gate, up = self._one(flat[token], self.gate_up_proj[expert]).chunk(2, dim=-1)
            h = self._one(F.silu(gate) * up, self.down_proj[expert])
            out.index_add_(0, token, h * weights[token, slot, None])
        return out.view(x.shape)


MODES = ["grouped", "eager", "batched", "dense"]


def _block(stored_in_out: bool, mode: str) -> _GroupedMoE:
    if mode == "grouped":
        return _GroupedMoE(stored_in_out).eval()
    return _LoopedMoE(stored_in_out, mode).eval()


class _Net(nn.Module):
    """The MoE block on a residual stream of prunable width, between two linear layers."""

    def __init__(self, stored_in_out: bool = False, mode: str = "grouped") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, HIDDEN)
        self.moe = _block(stored_in_out, mode)
        self.out = nn.Linear(HIDDEN, 8)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        return self.out(h + self.moe(h))


def _inputs() -> Tensor:
    return torch.randn(2, 5, HIDDEN, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stored_in_out", [False, True])
def test_prune_halves_every_experts_intermediate_channels(stored_in_out: bool,
                                                          mode: str) -> None:
    model, x = _block(stored_in_out, mode), _inputs()
    pruned = pk.prune(model, (x,), ratio=0.5).model
    gate_up, down = pruned.gate_up_proj, pruned.down_proj
    if stored_in_out:  # [E, in, out]
        assert gate_up.shape == (EXPERTS, HIDDEN, INTER) and down.shape == (EXPERTS, INTER // 2,
                                                                            HIDDEN)
    else:  # [E, out, in]
        assert gate_up.shape == (EXPERTS, INTER, HIDDEN) and down.shape == (EXPERTS, HIDDEN,
                                                                            INTER // 2)
    assert isinstance(gate_up, nn.Parameter) and pruned.router.weight.shape == (EXPERTS, HIDDEN)
    with torch.no_grad():
        assert pruned(x).shape == x.shape


def test_gate_and_up_halves_lose_the_same_channels() -> None:
    model, x = _GroupedMoE().eval(), _inputs()
    result = pk.prune(model, (x,), ratio=0.5)
    kept_rows = torch.tensor(result.plan["params"]["gate_up_proj"]["keep"]["1"])
    kept_inner = torch.tensor(result.plan["params"]["down_proj"]["keep"]["2"])
    assert torch.equal(kept_rows, torch.cat([kept_inner, kept_inner + INTER]))
    assert torch.equal(result.model.gate_up_proj, model.gate_up_proj[:, kept_rows])


@pytest.mark.parametrize("stored_in_out", [False, True])
def test_ratio_zero_leaves_outputs_identical(stored_in_out: bool) -> None:
    model, x = _Net(stored_in_out).eval(), torch.randn(2, 5, 8)
    pruned = pk.prune(model, (x,), ratio=0.0).model
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stored_in_out", [False, True])
def test_hidden_width_is_cut_in_every_expert_and_the_model_runs(stored_in_out: bool,
                                                                mode: str) -> None:
    model, x = _Net(stored_in_out, mode).eval(), torch.randn(2, 5, 8)
    result = pk.prune(model, (x,), ratio=0.5, ignore=[model.out])
    pruned = result.model
    half = HIDDEN // 2
    in_axis = 1 if stored_in_out else 2
    assert pruned.inp.out_features == half and pruned.moe.router.in_features == half
    assert pruned.moe.gate_up_proj.shape[in_axis] == half
    assert pruned.moe.gate_up_proj.shape[3 - in_axis] == INTER  # 2 * INTER / 2
    assert "moe.gate_up_proj" in result.coverage.prunable
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape == (2, 5, 8)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stored_in_out", [False, True])
def test_pruning_equals_zeroing_the_removed_intermediate_channels(stored_in_out: bool,
                                                                  mode: str) -> None:
    model, x = _block(stored_in_out, mode), _inputs()
    result = pk.prune(model, (x,), ratio=0.5)
    gate_up_axis, down_axis = (2, 1) if stored_in_out else (1, 2)
    kept = torch.tensor(result.plan["params"]["down_proj"]["keep"][str(down_axis)])
    removed = torch.ones(INTER, dtype=torch.bool)
    removed[kept] = False
    zeroed = _block(stored_in_out, mode)
    with torch.no_grad():
        zeroed.gate_up_proj.index_fill_(gate_up_axis, removed.repeat(2).nonzero().flatten(), 0)
        zeroed.down_proj.index_fill_(down_axis, removed.nonzero().flatten(), 0)
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("stored_in_out", [False, True])
def test_every_way_of_running_the_experts_gives_one_plan(stored_in_out: bool) -> None:
    x = torch.randn(2, 5, 8)
    plans = [pk.prune(_Net(stored_in_out, mode).eval(), (x,), ratio=0.5).plan for mode in MODES]
    assert plans[0]["params"] and plans[1] == plans[0] and plans[2] == plans[0]


def test_plan_replays_on_a_fresh_model() -> None:
    model, x = _Net().eval(), torch.randn(2, 5, 8)
    result = pk.prune(model, (x,), ratio=0.5, ignore=[model.out])
    fresh = _Net().eval()
    replay_plan(fresh, json.loads(json.dumps(result.plan)))
    with torch.no_grad():
        assert torch.equal(fresh(x), result.model(x))
    assert fresh.moe.down_proj.shape == result.model.moe.down_proj.shape


class _ComputedStack(nn.Module):
    """Expert weights scaled per expert in the forward: ``mat_b`` is computed."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(HIDDEN, HIDDEN)
        self.weight = nn.Parameter(torch.randn(EXPERTS, HIDDEN, INTER))
        self.scale = nn.Parameter(torch.rand(EXPERTS, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        offs = torch.tensor([2, 4, 8, 10], dtype=torch.int32)
        return F.grouped_mm(self.inp(x), self.weight * self.scale, offs=offs)


@pytest.mark.filterwarnings("ignore:prune removed nothing")
def test_a_computed_stack_of_weights_is_refused_by_name_or_kept_whole() -> None:
    model, x = _ComputedStack().eval(), torch.randn(10, HIDDEN)
    with pytest.raises(UnsupportedOpError, match="mat_b is computed"):
        pk.prune(model, (x,), ratio=0.5)
    with pytest.warns(UserWarning, match="mat_b is computed"):
        result = pk.prune(model, (x,), ratio=0.5, strict=False)
    assert result.model.weight.shape == model.weight.shape
    with torch.no_grad():
        assert torch.equal(result.model(x), model(x))


class _PerExpertBatches(nn.Module):
    """Tokens already laid out per expert (``[E, capacity, hidden]``): grouped products
    without offsets, one group per leading index."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.up = nn.Parameter(torch.randn(EXPERTS, HIDDEN, INTER, generator=generator))
        self.down = nn.Parameter(torch.randn(EXPERTS, INTER, HIDDEN, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        return F.grouped_mm(torch.relu(F.grouped_mm(x, self.up)), self.down)


def test_grouped_products_without_offsets_cut_every_expert_alike() -> None:
    model, x = _PerExpertBatches().eval(), torch.randn(EXPERTS, 4, HIDDEN)
    result = pk.prune(model, (x,), ratio=0.5)
    assert result.model.up.shape == (EXPERTS, HIDDEN, INTER // 2)
    assert result.model.down.shape == (EXPERTS, INTER // 2, HIDDEN)
    kept = torch.tensor(result.plan["params"]["up"]["keep"]["2"])
    with torch.no_grad():
        expected = torch.relu(x @ model.up[:, :, kept]) @ model.down[:, kept]
        torch.testing.assert_close(result.model(x), expected, rtol=0, atol=1e-5)


class _AddIntoChannels(nn.Module):
    """``index_add_`` along the channel dim: its literal positions would go stale."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(HIDDEN, INTER)
        self.down = nn.Linear(INTER, HIDDEN)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        return self.down(torch.zeros_like(h).index_add_(1, torch.arange(INTER).flip(0), h))


@pytest.mark.filterwarnings("ignore:prune removed nothing")
def test_index_add_along_a_channel_dim_is_refused_by_name_or_kept_whole() -> None:
    model, x = _AddIntoChannels().eval(), torch.randn(3, HIDDEN)
    with pytest.raises(UnsupportedOpError, match="adds along dim 1, which carries channels"):
        pk.prune(model, (x,), ratio=0.5)
    with pytest.warns(UserWarning, match="index_add"):
        result = pk.prune(model, (x,), ratio=0.5, strict=False)
    assert result.model.up.out_features == INTER
    with torch.no_grad():
        assert torch.equal(result.model(x), model(x))


class _PickedTable(nn.Module):
    """A 3-D parameter indexed on its first axis and added elementwise: not a layer weight."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = nn.Linear(HIDDEN, INTER), nn.Linear(INTER, HIDDEN)
        self.table = nn.Parameter(torch.randn(EXPERTS, 5, INTER))

    def forward(self, x: Tensor) -> Tensor:
        return self.down(torch.relu(self.up(x) + self.table[1]))


def test_a_picked_slice_read_elementwise_is_cut_along_its_channels() -> None:
    model, x = _PickedTable().eval(), torch.randn(5, HIDDEN)
    result = pk.prune(model, (x,), ratio=0.5)
    kept = result.plan["params"]["table"]["keep"]["2"]
    assert torch.equal(result.model.table, model.table[:, :, kept])
    assert result.model.up.out_features == INTER // 2


@pytest.mark.parametrize("mode", MODES)
def test_cut_widths_keep_the_16_byte_strides_grouped_products_want(mode: str) -> None:
    # ratio 0.3 keeps 23 of 32 intermediate and 12 of 16 hidden channels: 23 is rounded up to
    # 24 float32 channels (96 bytes), whichever way the trace ran the experts
    model, x = _Net(False, mode).eval(), torch.randn(2, 5, 8)
    result = pk.prune(model, (x,), ratio=0.3, ignore=[model.out])
    moe = result.model.moe
    assert moe.gate_up_proj.shape == (EXPERTS, 2 * 24, 12)
    assert moe.down_proj.shape == (EXPERTS, 12, 24)
    assert result.plan["params"]["moe.down_proj"]["sizes"] == {"1": 16, "2": 32}
    with torch.no_grad():  # the pruned experts also run as grouped products
        h = result.model.inp(x)
        assert _GroupedMoE.forward(moe, h).shape == h.shape
