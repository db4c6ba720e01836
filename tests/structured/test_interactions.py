"""Feature interactions of recommendation models: DLRM stacks the dense vector and the
embeddings of every sparse field into ``T [B, fields, d]`` (``torch.stack``, or ``cat``
then ``view(B, -1, d)`` with ``d`` read from a shape) and takes ``T @ Tᵀ``. The embedding
width ``d`` is pruned alike in every field: channel k goes from every row of T. Before,
both ways kept every table and the bottom MLP's output whole."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import prunekit as pk


class DLRM(nn.Module):
    def __init__(self, how: str, d: int = 16, fields: int = 3) -> None:
        super().__init__()
        self.how = how
        self.bottom = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, d), nn.ReLU())
        self.tables = nn.ModuleList(nn.Embedding(50, d) for _ in range(fields))
        pairs = (fields + 1) * fields // 2
        self.top = nn.Sequential(nn.Linear(d + pairs, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        x = self.bottom(dense)
        vectors = [x] + [table(sparse[:, i]) for i, table in enumerate(self.tables)]
        batch, d = x.shape
        if self.how == "stack":
            t = torch.stack(vectors, dim=1)
        elif self.how == "literal":
            t = torch.cat(vectors, dim=1).view(batch, -1, 16)
        else:  # facebookresearch/dlrm's interact_features
            t = torch.cat(vectors, dim=1).view((batch, -1, d))
        z = torch.bmm(t, torch.transpose(t, 1, 2))
        rows, cols = torch.tril_indices(z.shape[1], z.shape[2], offset=-1)
        return self.top(torch.cat([x, z[:, rows, cols]], dim=1))


def _inputs(batch: int) -> tuple[Tensor, Tensor]:
    return torch.randn(batch, 13), torch.randint(0, 50, (batch, 3))


def _zeroed(model: nn.Module, plan: dict) -> nn.Module:
    """``model`` with the outputs the plan removes zeroed (rows of Linear weights and
    biases, columns of embedding tables)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for path, entry in plan["modules"].items():
            module, keep = ref.get_submodule(path), entry["keep"].get("out")
            if keep is None:
                continue
            axis = 1 if isinstance(module, nn.Embedding) else 0
            gone = sorted(set(range(module.weight.shape[axis])) - set(keep))
            module.weight.index_fill_(axis, torch.tensor(gone, dtype=torch.long), 0.0)
            if getattr(module, "bias", None) is not None:
                module.bias[gone] = 0
    return ref


@pytest.mark.parametrize("how", ["view_of_width_read", "stack"])
def test_the_embedding_width_is_pruned_alike_in_every_field(how: str) -> None:
    torch.manual_seed(0)
    model = DLRM(how).eval()
    result = pk.prune(model, _inputs(4), ratio=0.5)
    pruned = result.model
    assert pruned.bottom[2].out_features == 8 and pruned.top[0].in_features == 8 + 6
    assert all(table.embedding_dim == 8 for table in pruned.tables)
    keeps = [result.plan["modules"][p]["keep"]["out"] for p in ("bottom.2", "tables.0",
                                                                 "tables.2")]
    assert keeps[0] == keeps[1] == keeps[2]
    assert result.params_kept < 0.5
    reference = _zeroed(model, result.plan)
    for batch in (4, 9):
        x = _inputs(batch)
        torch.testing.assert_close(pruned(*x), reference(*x))


def test_a_width_written_as_a_literal_keeps_the_tables_whole() -> None:
    model = DLRM("literal").eval()
    result = pk.prune(model, _inputs(4), ratio=0.5)
    assert all(table.embedding_dim == 16 for table in result.model.tables)
    assert "tables.0.weight" in result.coverage.fixed
    x = _inputs(5)
    assert result.model(*x).shape == (5, 1)


class Gram(nn.Module):
    """Rows from three layers, contracted with themselves and with a fourth."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = nn.ModuleList(nn.Linear(6, 10) for _ in range(3))
        self.other = nn.Linear(6, 10)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        t = torch.stack([row(x) for row in self.rows], dim=1)  # [B, 3, 10]
        return self.head((t @ self.other(x).unsqueeze(-1)).squeeze(-1))  # [B, 3]


def test_rows_contracted_with_another_layer_go_with_its_channels() -> None:
    torch.manual_seed(0)
    model = Gram().eval()
    x = torch.randn(4, 6)
    result = pk.prune(model, x, ratio=0.5)
    plan = result.plan["modules"]
    assert plan["rows.0"]["keep"]["out"] == plan["rows.1"]["keep"]["out"] == \
        plan["other"]["keep"]["out"]
    assert result.model.other.out_features == 5
    torch.testing.assert_close(result.model(x), _zeroed(model, result.plan)(x))


class MMoE(nn.Module):
    """Multi-gate mixture of experts: each task's gate weights the experts' outputs,
    stacked as [B, E, H], by bmm, einsum or a broadcast product summed over E."""

    def __init__(self, how: str, experts: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.how = how
        self.experts = nn.ModuleList(nn.Linear(10, hidden) for _ in range(experts))
        self.gates = nn.ModuleList(nn.Linear(10, experts) for _ in range(2))
        self.towers = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(2))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        stacked = torch.stack([torch.relu(e(x)) for e in self.experts], dim=1)
        outs = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            g = gate(x).softmax(-1)
            if self.how == "bmm":
                mixed = torch.bmm(g.unsqueeze(1), stacked).squeeze(1)
            elif self.how == "einsum":
                mixed = torch.einsum("be,beh->bh", g, stacked)
            else:
                mixed = (g.unsqueeze(-1) * stacked).sum(1)
            outs.append(tower(mixed))
        return tuple(outs)


@pytest.mark.parametrize("how", ["bmm", "einsum", "sum"])
def test_gates_times_stacked_experts_prune_the_experts_width(how: str) -> None:
    # before, bmm and einsum kept every expert whole (the sum form pruned)
    torch.manual_seed(0)
    model = MMoE(how).eval()
    result = pk.prune(model, torch.randn(8, 10), ratio=0.5)
    pruned = result.model
    assert [e.out_features for e in pruned.experts] == [8, 8, 8]
    assert [g.out_features for g in pruned.gates] == [3, 3]  # the gates weigh every expert
    plan = result.plan["modules"]
    assert plan["experts.0"]["keep"]["out"] == plan["experts.2"]["keep"]["out"]
    reference = _zeroed(model, result.plan)
    x = torch.randn(5, 10)
    for got, want in zip(pruned(x), reference(x), strict=True):
        torch.testing.assert_close(got, want)


class FieldsEinsum(DLRM):
    def forward(self, dense: Tensor, sparse: Tensor) -> Tensor:
        x = self.bottom(dense)
        t = torch.stack([x] + [table(sparse[:, i]) for i, table in enumerate(self.tables)], 1)
        z = torch.einsum("bfd,bgd->bfg", t, t)
        rows, cols = torch.tril_indices(z.shape[1], z.shape[2], offset=-1)
        return self.top(torch.cat([x, z[:, rows, cols]], dim=1))


def test_field_interactions_written_as_einsum() -> None:
    torch.manual_seed(0)
    model = FieldsEinsum("stack").eval()
    result = pk.prune(model, _inputs(4), ratio=0.5)
    assert all(table.embedding_dim == 8 for table in result.model.tables)
    x = _inputs(6)
    torch.testing.assert_close(result.model(*x), _zeroed(model, result.plan)(*x))


class CrossV1(nn.Module):
    """DCN's cross layer with a vector weight: x0 * (x0 @ w) + b + x0."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(8, width), nn.Linear(width, 1)
        self.w, self.b = nn.Parameter(torch.randn(width)), nn.Parameter(torch.randn(width))

    def forward(self, x: Tensor) -> Tensor:
        x0 = self.inp(x)
        return self.out(x0 * (x0 @ self.w).unsqueeze(1) + self.b + x0)


def test_a_product_with_a_vector_weight() -> None:
    # before, the 1-D operand was refused
    torch.manual_seed(0)
    model = CrossV1().eval()
    result = pk.prune(model, torch.randn(4, 8), ratio=0.5)
    pruned = result.model
    assert pruned.w.shape == pruned.b.shape == (16,) and pruned.inp.out_features == 16
    keep = result.plan["modules"]["inp"]["keep"]["out"]
    reference = _zeroed(model, result.plan)
    with torch.no_grad():
        reference.b[sorted(set(range(32)) - set(keep))] = 0
    x = torch.randn(5, 8)
    torch.testing.assert_close(pruned(x), reference(x))


class CrossV2(nn.Module):
    """DCN-v2's cross layers with their weights stacked in one 3-D parameter, each read
    transposed: x0 * (xl @ W[i].t() + b[i]) + xl."""

    def __init__(self, width: int = 24, layers: int = 2) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(8, width), nn.Linear(width, 1)
        self.w = nn.Parameter(torch.randn(layers, width, width) * 0.1)
        self.b = nn.Parameter(torch.zeros(layers, width))

    def forward(self, x: Tensor) -> Tensor:
        x0 = xl = self.inp(x)
        for i in range(self.w.shape[0]):
            xl = x0 * (xl @ self.w[i].t() + self.b[i]) + xl
        return self.out(xl)


def test_stacked_layer_weights_read_transposed() -> None:
    # before, W[i].t() was read as a slice of W and every cross layer kept whole
    torch.manual_seed(0)
    model = CrossV2().eval()
    result = pk.prune(model, torch.randn(6, 8), ratio=0.5)
    pruned = result.model
    assert pruned.w.shape == (2, 12, 12) and pruned.inp.out_features == 12
    x = torch.randn(5, 8)
    torch.testing.assert_close(pruned(x), _zeroed(model, result.plan)(x))


class PeriodicNumeric(nn.Module):
    """rtdl's periodic embeddings of numeric features and their per-feature linear layers:
    ``freq`` ``[features, k]`` times the input ``x[..., None]``, then ``einsum('bfi,fio->
    bfo')``; and (``how="linear"``) a hand-written linear on the input."""

    def __init__(self, how: str, features: int = 4) -> None:
        super().__init__()
        self.how = how
        self.freq = nn.Parameter(torch.randn(features, 6))
        self.w = nn.Parameter(torch.randn(features, 6, 8) * 0.3)
        self.lin = nn.Parameter(torch.randn(features, 16))
        self.head = nn.Linear(features * 8 if how == "periodic" else 16, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "linear":
            return self.head(torch.relu((x[:, :, None] * self.lin).sum(1)))
        p = torch.cos(self.freq * x[..., None])
        return self.head(torch.relu(torch.einsum("bfi,fio->bfo", p, self.w)).flatten(1))


def test_a_parameter_axis_that_meets_the_models_input_keeps_its_size() -> None:
    """``freq``'s rows meet the input's features: before, they were cut with ``w``'s, and the
    forward check failed, blaming a width the trace could not see. A hand-written linear on
    the input still cuts its weight's other axis."""
    torch.manual_seed(0)
    model, x = PeriodicNumeric("periodic").eval(), torch.randn(8, 4)
    with pytest.warns(UserWarning, match="removed nothing"):
        result = pk.prune(model, x, ratio=0.5)
    assert result.model.freq.shape == (4, 6)
    assert "meets a model input" in result.coverage.fixed["freq"]
    model = PeriodicNumeric("linear").eval()
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.lin.shape == (4, 8) and result.model.head.in_features == 8
