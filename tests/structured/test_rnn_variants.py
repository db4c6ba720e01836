"""Recurrent variants: LSTM with ``proj_size`` (cell and projection units pruned apart) and
packed sequences (``pack_padded_sequence`` / ``pack_sequence`` → RNN → ``pad_packed_sequence``
or ``h_n``). Pruning keeps output shapes, cuts the parameters the widths predict, equals
zeroing the removed units in the unpruned model, and round-trips through save/load."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence

import prunekit as pk
from prunekit.errors import PruneValidationError
from prunekit.structured import prune

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")


def _rnn_params(rnn: nn.RNNBase, in_size: int, hidden: int, proj: int) -> int:
    """Parameter count of ``rnn``'s architecture at the given widths (bias on)."""
    gates = {"LSTM": 4, "GRU": 3}.get(rnn.mode, 1)
    dirs = 2 if rnn.bidirectional else 1
    out = proj or hidden
    total = 0
    for layer in range(rnn.num_layers):
        reads = in_size if layer == 0 else dirs * out
        per_dir = gates * hidden * (reads + out) + 2 * gates * hidden + proj * hidden
        total += dirs * per_dir
    return total


def _kept(size: int, ratio: float = 0.5) -> int:
    return size - math.floor(ratio * size + 1e-9)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _zero_removed_units(model: nn.Module, plan: dict, name: str) -> nn.Module:
    """A copy of ``model`` whose recurrent layer ``name`` computes 0 for every removed unit.

    A cell unit whose gate rows (weights and biases) are all zero has preactivations 0, so
    ``c = σ(0)·c + σ(0)·tanh(0)`` stays at its initial 0 and ``h = σ(0)·tanh(0) = 0`` (a GRU's
    ``h = ½·h``, the same); a projection unit whose ``weight_hr`` row is zero emits 0. Every
    reader of a zero contributes nothing, exactly as the pruned model does without it.
    Removed input channels are zeroed in the first layer's ``weight_ih`` columns.
    """
    zeroed = copy.deepcopy(model)
    rnn = zeroed.get_submodule(name)
    assert isinstance(rnn, nn.RNNBase)
    keep = plan["modules"][name]["keep"]
    gates, size = {"LSTM": 4, "GRU": 3}.get(rnn.mode, 1), rnn.hidden_size
    dirs = ["", "_reverse"] if rnn.bidirectional else [""]
    with torch.no_grad():
        for layer in range(rnn.num_layers):
            for sfx in dirs:
                if "hidden" in keep:
                    drop = sorted(set(range(size)) - set(keep["hidden"]))
                    rows = [g * size + j for g in range(gates) for j in drop]
                    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                        getattr(rnn, f"{kind}_l{layer}{sfx}")[rows] = 0
                if "proj" in keep:
                    drop = sorted(set(range(rnn.proj_size)) - set(keep["proj"]))
                    getattr(rnn, f"weight_hr_l{layer}{sfx}")[drop] = 0
                if layer == 0 and "in" in keep:
                    drop = sorted(set(range(rnn.input_size)) - set(keep["in"]))
                    getattr(rnn, f"weight_ih_l0{sfx}")[:, drop] = 0
    return zeroed


def _run(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    with torch.no_grad():
        return model(*inputs)


# -- LSTM with proj_size -------------------------------------------------------------------

class ProjLSTM(nn.Module):
    """Linear(6→6) → LSTM(6, 12, proj_size=5) → head on the last step's output, h_n and c_n."""

    def __init__(self, num_layers: int = 1, bidirectional: bool = False,
                 learned_state: bool = False) -> None:
        super().__init__()
        self.pre = nn.Linear(6, 6)
        self.rnn = nn.LSTM(6, 12, proj_size=5, num_layers=num_layers, batch_first=True,
                           bidirectional=bidirectional)
        dirs = 2 if bidirectional else 1
        self.states = num_layers * dirs
        self.h0 = nn.Parameter(torch.randn(self.states, 1, 5)) if learned_state else None
        self.c0 = nn.Parameter(torch.randn(self.states, 1, 12)) if learned_state else None
        self.head = nn.Linear(dirs * 5 + 5 + 12, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pre(x)
        if self.h0 is not None and self.c0 is not None:
            batch = x.shape[0]
            hx = (self.h0.expand(-1, batch, -1).contiguous(),
                  self.c0.expand(-1, batch, -1).contiguous())
            out, (h, c) = self.rnn(x, hx)
        else:
            out, (h, c) = self.rnn(x)
        return self.head(torch.cat([out[:, -1], h[-1], c[-1]], dim=-1))


PROJ_CASES = [
    pytest.param({}, id="one_layer"),
    pytest.param({"num_layers": 2}, id="two_layers"),
    pytest.param({"bidirectional": True}, id="bidirectional"),
    pytest.param({"num_layers": 2, "bidirectional": True, "learned_state": True},
                 id="bidirectional_two_layers_h0_c0"),
]


@pytest.mark.parametrize("kwargs", PROJ_CASES)
def test_proj_lstm_prunes_cell_and_projection_units(kwargs: dict) -> None:
    torch.manual_seed(0)
    model, x = ProjLSTM(**kwargs).eval(), torch.randn(3, 7, 6)
    result = prune(model, (x,), ratio=0.5)
    rnn = result.model.rnn
    hidden, proj, pre_out = _kept(12), _kept(5), _kept(6)
    assert (rnn.hidden_size, rnn.proj_size, rnn.input_size) == (hidden, proj, pre_out)
    assert rnn.weight_hr_l0.shape == (proj, hidden)
    assert rnn.weight_hh_l0.shape == (4 * hidden, proj)
    assert _run(result.model, (x,)).shape == (3, 3)
    dirs = 2 if model.rnn.bidirectional else 1
    others = 6 * pre_out + pre_out + (dirs * proj + proj + hidden) * 3 + 3
    if model.h0 is not None:
        others += model.states * (proj + hidden)
    assert _count(result.model) == _rnn_params(model.rnn, pre_out, hidden, proj) + others
    assert _count(model) == _rnn_params(model.rnn, 6, 12, 5) + (
        6 * 6 + 6 + (dirs * 5 + 17) * 3 + 3 + (model.states * 17 if model.h0 is not None else 0))
    if model.h0 is not None:
        assert result.model.h0.shape == (model.states, 1, proj)
        assert result.model.c0.shape == (model.states, 1, hidden)


@pytest.mark.parametrize("kwargs", PROJ_CASES)
def test_proj_lstm_equals_zeroing_removed_units(kwargs: dict) -> None:
    torch.manual_seed(1)
    model, x = ProjLSTM(**kwargs).eval(), torch.randn(3, 7, 6)
    result = prune(model, (x,), ratio=0.5, importance="random", seed=4)
    zeroed = _zero_removed_units(model, result.plan, "rnn")
    keep = result.plan["modules"]["rnn"]["keep"]
    assert sorted(keep) == ["hidden", "in", "proj"]
    with torch.no_grad():  # removed pre-layer outputs are read by zeroed columns already
        if zeroed.h0 is not None and zeroed.c0 is not None:
            zeroed.h0[..., sorted(set(range(5)) - set(keep["proj"]))] = 0
            zeroed.c0[..., sorted(set(range(12)) - set(keep["hidden"]))] = 0
    torch.testing.assert_close(_run(result.model, (x,)), _run(zeroed, (x,)),
                               rtol=1e-5, atol=1e-6)


def test_proj_lstm_weight_views_rank_projection_rows_and_cell_units() -> None:
    torch.manual_seed(2)
    model, x = ProjLSTM().eval(), torch.randn(3, 7, 6)
    with torch.no_grad():
        model.rnn.weight_hr_l0.mul_(1e-3)
        model.rnn.weight_hr_l0[[1, 3, 4]] *= 1e4  # the loudest projection rows
        for g in range(4):  # the loudest cell units, in every gate
            for w in (model.rnn.weight_ih_l0, model.rnn.weight_hh_l0):
                w[g * 12: g * 12 + 12].mul_(1e-3)
                w[[g * 12 + j for j in (0, 2, 5, 7, 9, 11)]] *= 1e4
    result = prune(model, (x,), ratio=0.5, importance="l2")
    keep = result.plan["modules"]["rnn"]["keep"]
    assert keep["proj"] == [1, 3, 4]
    assert keep["hidden"] == [0, 2, 5, 7, 9, 11]


def test_proj_lstm_at_ratio_zero_is_unchanged() -> None:
    torch.manual_seed(3)
    model, x = ProjLSTM(num_layers=2, bidirectional=True).eval(), torch.randn(3, 7, 6)
    result = prune(model, (x,), ratio=0.0)
    assert result.plan["modules"] == {}
    assert (result.model.rnn.hidden_size, result.model.rnn.proj_size) == (12, 5)
    torch.testing.assert_close(_run(result.model, (x,)), _run(model, (x,)), rtol=0, atol=0)


class TightProj(nn.Module):
    """LSTM(4, 2, proj_size=1): halving both widths would leave proj_size == hidden_size."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.rnn = nn.LSTM(4, 2, proj_size=1, batch_first=True)
        self.head = nn.Linear(1, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(self.pre(x))[0][:, -1])


def test_proj_size_reaching_hidden_size_is_refused_or_kept_whole() -> None:
    torch.manual_seed(4)
    model, x = TightProj().eval(), torch.randn(2, 5, 4)
    with pytest.raises(PruneValidationError, match="proj_size=1 >= hidden_size=1"):
        prune(model, (x,), ratio=0.5)
    assert model.rnn.hidden_size == 2  # the user's model is untouched
    with pytest.warns(UserWarning, match="kept whole"):
        result = prune(model, (x,), ratio=0.5, strict=False)
    rnn = result.model.rnn
    assert rnn.proj_size < rnn.hidden_size
    assert _run(result.model, (x,)).shape == (2, 3)


# -- packed sequences ----------------------------------------------------------------------

class PackedNet(nn.Module):
    """Embedding → pack_padded_sequence → LSTM/GRU → pad_packed_sequence or h_n → Linear."""

    def __init__(self, kind: str = "lstm", path: str = "padded", enforce_sorted: bool = False,
                 bidirectional: bool = False, num_layers: int = 2) -> None:
        super().__init__()
        self.path, self.enforce_sorted = path, enforce_sorted
        self.emb = nn.Embedding(50, 16)
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(16, 24, num_layers=num_layers, batch_first=True,
                       bidirectional=bidirectional)
        self.dirs = 2 if bidirectional else 1
        self.head = nn.Linear(self.dirs * 24, 3)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(self.emb(tokens), lengths, batch_first=True,
                                      enforce_sorted=self.enforce_sorted)
        out, state = self.rnn(packed)
        if self.path == "padded":
            padded, _ = pad_packed_sequence(out, batch_first=True)
            return self.head(padded.sum(1))
        h = state[0] if isinstance(state, tuple) else state
        return self.head(torch.cat(list(h[-self.dirs:]), dim=-1))


class PackSequenceNet(nn.Module):
    """Embedding → per-sample slices → pack_sequence → RNN → pad_packed_sequence → Linear."""

    def __init__(self, kind: str = "gru", bidirectional: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(16, 24, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear((2 if bidirectional else 1) * 24, 3)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        emb = self.emb(tokens)
        seqs = [emb[i, :n] for i, n in enumerate(lengths.tolist())]
        out, _ = self.rnn(pack_sequence(seqs, enforce_sorted=False))
        padded, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return self.head(padded.mean(1))


def _tokens(sorted_lengths: bool) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([7, 5, 3] if sorted_lengths else [3, 7, 5])
    return torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0)), lengths


PACKED_CASES = [
    pytest.param(lambda: PackedNet("lstm", "padded"), False, id="lstm_padded_unsorted"),
    pytest.param(lambda: PackedNet("lstm", "h_n", enforce_sorted=True), True,
                 id="lstm_h_n_sorted"),
    pytest.param(lambda: PackedNet("gru", "padded", enforce_sorted=True), True,
                 id="gru_padded_sorted"),
    pytest.param(lambda: PackedNet("gru", "h_n"), False, id="gru_h_n_unsorted"),
    pytest.param(lambda: PackedNet("lstm", "padded", bidirectional=True), False,
                 id="bilstm_padded_unsorted"),
    pytest.param(lambda: PackedNet("lstm", "h_n", bidirectional=True), False,
                 id="bilstm_h_n_unsorted"),
    pytest.param(lambda: PackSequenceNet("gru"), False, id="pack_sequence_bigru"),
    pytest.param(lambda: PackSequenceNet("lstm", bidirectional=False), False,
                 id="pack_sequence_lstm"),
]


@pytest.mark.parametrize(("build", "sorted_lengths"), PACKED_CASES)
def test_packed_sequences_prune_hidden_and_input_units(build, sorted_lengths: bool) -> None:
    torch.manual_seed(5)
    model, inputs = build().eval(), _tokens(sorted_lengths)
    result = prune(model, inputs, ratio=0.5)
    rnn, before = result.model.rnn, model.rnn
    assert (rnn.hidden_size, rnn.input_size) == (12, 8)
    assert result.model.emb.weight.shape == (50, 8)
    assert _run(result.model, inputs).shape == _run(model, inputs).shape == (3, 3)
    dirs = 2 if before.bidirectional else 1
    assert _count(result.model) == _rnn_params(before, 8, 12, 0) + 50 * 8 + dirs * 12 * 3 + 3
    assert _count(model) == _rnn_params(before, 16, 24, 0) + 50 * 16 + dirs * 24 * 3 + 3
    assert result.coverage.fixed == {}


@pytest.mark.parametrize(("build", "sorted_lengths"), PACKED_CASES)
def test_packed_sequences_equal_zeroing_removed_units(build, sorted_lengths: bool) -> None:
    torch.manual_seed(6)
    model, inputs = build().eval(), _tokens(sorted_lengths)
    result = prune(model, inputs, ratio=0.5, importance="random", seed=7)
    zeroed = _zero_removed_units(model, result.plan, "rnn")
    torch.testing.assert_close(_run(result.model, inputs), _run(zeroed, inputs),
                               rtol=1e-5, atol=1e-6)


def test_packed_sequences_at_ratio_zero_are_unchanged() -> None:
    torch.manual_seed(8)
    model, inputs = PackedNet("lstm", "padded", bidirectional=True).eval(), _tokens(False)
    result = prune(model, inputs, ratio=0.0)
    assert result.plan["modules"] == {}
    torch.testing.assert_close(_run(result.model, inputs), _run(model, inputs), rtol=0, atol=0)


def test_packed_channels_along_the_batch_are_joined_not_split() -> None:
    """Two producers stacked along the batch dim feed one packed LSTM: feature f of both is
    read by the same input column, so the two layers lose the same channels."""

    class Stacked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 6)
            self.rnn = nn.GRU(6, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
            both = torch.cat([self.a(x), self.b(x)], dim=0)
            _, h = self.rnn(pack_padded_sequence(both, lengths, batch_first=True))
            return self.head(h[-1])

    torch.manual_seed(9)
    model, inputs = Stacked().eval(), (torch.randn(2, 5, 4), torch.tensor([5, 4, 3, 2]))
    result = prune(model, inputs, ratio=0.5, importance="random", seed=1)
    keep = result.plan["modules"]
    assert keep["a"]["keep"]["out"] == keep["b"]["keep"]["out"] == keep["rnn"]["keep"]["in"]
    assert len(keep["rnn"]["keep"]["in"]) == 3
    assert _run(result.model, inputs).shape == (4, 2)


# -- save / load ---------------------------------------------------------------------------

@pytest.mark.parametrize(("build", "inputs"), [
    pytest.param(lambda: ProjLSTM(num_layers=2, bidirectional=True, learned_state=True),
                 lambda: (torch.randn(3, 7, 6),), id="proj_lstm"),
    pytest.param(lambda: PackedNet("lstm", "padded", bidirectional=True),
                 lambda: _tokens(False), id="packed_bilstm"),
    pytest.param(lambda: PackSequenceNet("gru"), lambda: _tokens(False), id="pack_sequence_gru"),
])
def test_pruned_recurrent_variants_save_and_load(build, inputs, tmp_path: Path) -> None:
    torch.manual_seed(10)
    model, example = build().eval(), inputs()
    result = prune(model, example, ratio=0.5)
    pk.save(result, tmp_path / "out")
    torch.manual_seed(11)  # a fresh model with other weights: load brings the saved ones
    loaded = pk.load(tmp_path / "out", build()).eval()
    assert loaded.rnn.hidden_size == result.model.rnn.hidden_size
    assert getattr(loaded.rnn, "proj_size", 0) == getattr(result.model.rnn, "proj_size", 0)
    torch.testing.assert_close(_run(loaded, example), _run(result.model, example),
                               rtol=0, atol=0)
