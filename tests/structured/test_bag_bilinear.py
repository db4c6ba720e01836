"""``nn.EmbeddingBag`` / ``F.embedding_bag`` and ``nn.Bilinear`` / ``F.bilinear``: their
widths shrink with their attributes, and pruning equals zeroing the removed channels'
contribution in the unpruned model."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import UnsupportedOpError
from prunekit.structured import prune


def _removed(keep: list[int], size: int) -> Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[torch.tensor(keep, dtype=torch.long)] = False
    return mask.nonzero().reshape(-1)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Bag(nn.Module):
    def __init__(self, mode: str = "mean") -> None:
        super().__init__()
        self.e = nn.EmbeddingBag(50, 16, mode=mode)
        self.fc = nn.Linear(16, 32)
        self.o = nn.Linear(32, 3)

    def forward(self, ids: Tensor, offsets: Tensor | None = None,
                per_sample_weights: Tensor | None = None) -> Tensor:
        return self.o(F.relu(self.fc(self.e(ids, offsets, per_sample_weights))))


class Bi(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(8, 12)
        self.bl = nn.Bilinear(16, 12, 20)
        self.o = nn.Linear(20, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.o(F.relu(self.bl(F.relu(self.a(x)), F.relu(self.b(x)))))


class SelfBi(nn.Module):
    """One input read on both sides: ``bl(h, h)``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.bl = nn.Bilinear(16, 16, 20)
        self.o = nn.Linear(20, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.a(x))
        return self.o(F.relu(self.bl(h, h)))


def _bag_inputs() -> tuple[Tensor, ...]:
    return (torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0)),)


def _flat_bag_inputs() -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (10,), generator=gen)
    offsets = torch.tensor([0, 3, 3, 8])  # the second bag is empty
    return ids, offsets, torch.rand(10, generator=gen)


# --- EmbeddingBag ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_dim_shrinks_in_every_mode(mode: str) -> None:
    model, inputs = Bag(mode).eval(), _bag_inputs()
    result = prune(model, inputs, ratio=0.5)
    e, fc = result.model.e, result.model.fc
    assert e.embedding_dim == 8 and e.weight.shape == (50, 8)
    assert fc.in_features == 8 and fc.out_features == 16
    assert _n_params(result.model) == 50 * 8 + (8 * 16 + 16) + (16 * 3 + 3)
    with torch.no_grad():
        assert result.model(*inputs).shape == model(*inputs).shape == (3, 3)


def _bag_equivalence(model: Bag, inputs: tuple[Tensor, ...]) -> None:
    result = prune(model, inputs, ratio=0.5, importance="random", seed=3)
    keep = result.plan["modules"]["e"]["keep"]["out"]
    assert len(keep) == 8
    zeroed = copy.deepcopy(model)
    with torch.no_grad():  # the removed vector columns reach nothing but fc's inputs
        zeroed.fc.weight[:, _removed(keep, 16)] = 0
        zeroed.o.weight[:, _removed(result.plan["modules"]["fc"]["keep"]["out"], 32)] = 0
        torch.testing.assert_close(result.model(*inputs), zeroed(*inputs), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.model.e.weight, model.e.weight[:, keep])


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_equivalence(mode: str) -> None:
    _bag_equivalence(Bag(mode).eval(), _bag_inputs())


def test_embedding_bag_offsets_and_per_sample_weights() -> None:
    model, inputs = Bag("sum").eval(), _flat_bag_inputs()
    _bag_equivalence(model, inputs)
    result = prune(model, inputs, ratio=0.5)
    with torch.no_grad():
        out = result.model(*inputs)
    assert out.shape == (4, 3) and result.model.e.embedding_dim == 8


def test_per_sample_weights_from_a_layer_keep_their_width() -> None:
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.g = nn.Linear(4, 7)  # one weight per index of a [B, 7] bag
            self.e = nn.EmbeddingBag(50, 16, mode="sum")
            self.o = nn.Linear(16, 3)

        def forward(self, ids: Tensor, z: Tensor) -> Tensor:
            return self.o(self.e(ids, per_sample_weights=torch.sigmoid(self.g(z))))

    inputs = (_bag_inputs()[0], torch.randn(3, 4))
    result = prune(Gated().eval(), inputs, ratio=0.5)
    assert result.model.g.out_features == 7
    assert result.model.e.embedding_dim == 8
    assert result.model(*inputs).shape == (3, 3)


def test_functional_embedding_bag_syncs_embedding_dim() -> None:
    class Scaled(nn.EmbeddingBag):  # a forward of its own: traced op by op
        def forward(self, ids: Tensor) -> Tensor:  # type: ignore[override]
            return F.embedding_bag(ids, self.weight * 2.0, mode="max")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e = Scaled(50, 16)
            self.o = nn.Linear(16, 3)

        def forward(self, ids: Tensor) -> Tensor:
            return self.o(self.e(ids))

    model, inputs = Net().eval(), _bag_inputs()
    result = prune(model, inputs, ratio=0.5, importance="random", seed=5)
    assert result.model.e.embedding_dim == 8 and result.model.e.weight.shape == (50, 8)
    keep = result.plan["params"]["e.weight"]["keep"]["1"]
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.o.weight[:, _removed(keep, 16)] = 0
        torch.testing.assert_close(result.model(*inputs), zeroed(*inputs), rtol=1e-5, atol=1e-6)


# --- Bilinear -------------------------------------------------------------------------------

def test_bilinear_widths_and_attributes() -> None:
    model, x = Bi().eval(), torch.randn(4, 8)
    result = prune(model, x, ratio=0.5)
    bl = result.model.bl
    assert (bl.in1_features, bl.in2_features, bl.out_features) == (8, 6, 10)
    assert bl.weight.shape == (10, 8, 6) and bl.bias is not None and bl.bias.shape == (10,)
    assert result.model.a.out_features == 8 and result.model.b.out_features == 6
    assert result.model.o.in_features == 10
    expected = (8 * 8 + 8) + (8 * 6 + 6) + (10 * 8 * 6 + 10) + (10 * 3 + 3)
    assert _n_params(result.model) == expected
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape == (4, 3)


def test_ignored_bilinear_keeps_its_output_and_lets_its_inputs_go() -> None:
    model = Bi().eval()
    bl = prune(model, torch.randn(4, 8), ratio=0.5, ignore=[model.bl]).model.bl
    assert (bl.in1_features, bl.in2_features, bl.out_features) == (8, 6, 20)


def test_ignored_attention_lets_its_key_and_value_widths_go() -> None:
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.kv = nn.Linear(8, 16), nn.Linear(8, 12)
            self.att = nn.MultiheadAttention(16, 4, kdim=12, vdim=12, batch_first=True)
            self.o = nn.Linear(16, 3)

        def forward(self, x: Tensor) -> Tensor:
            kv = F.relu(self.kv(x))
            return self.o(self.att(self.q(x), kv, kv)[0])

    model = Cross().eval()
    pruned = prune(model, torch.randn(2, 5, 8), ratio=0.5, ignore=[model.att]).model
    assert (pruned.att.embed_dim, pruned.att.num_heads, pruned.att.kdim) == (16, 4, 6)
    assert pruned.kv.out_features == 6 and pruned.q.out_features == 16


def _zeroed_bilinear(model: nn.Module, plan: dict) -> nn.Module:
    """``model`` with the plan's removed bilinear inputs and outputs contributing nothing."""
    zeroed = copy.deepcopy(model)
    keep = plan["modules"]["bl"]["keep"]
    bl = zeroed.bl
    with torch.no_grad():
        bl.weight[:, _removed(keep["in1"], bl.in1_features)] = 0
        bl.weight[:, :, _removed(keep["in2"], bl.in2_features)] = 0
        zeroed.o.weight[:, _removed(keep["out"], bl.out_features)] = 0
    return zeroed


@pytest.mark.parametrize("net", [Bi, SelfBi])
def test_bilinear_equivalence(net: type[nn.Module]) -> None:
    model, x = net().eval(), torch.randn(4, 8)
    result = prune(model, x, ratio=0.5, importance="random", seed=2)
    keep = result.plan["modules"]["bl"]["keep"]
    assert {"in1", "in2", "out"} <= keep.keys()
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), _zeroed_bilinear(model, result.plan)(x),
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(result.model.bl.weight,
                                   model.bl.weight[keep["out"]][:, keep["in1"]][:, :, keep["in2"]])


def test_bilinear_on_one_input_cuts_both_axes_alike() -> None:
    model, x = SelfBi().eval(), torch.randn(4, 8)
    result = prune(model, x, ratio=0.5, importance="random", seed=7)
    keep = result.plan["modules"]["bl"]["keep"]
    assert keep["in1"] == keep["in2"] == result.plan["modules"]["a"]["keep"]["out"]
    bl = result.model.bl
    assert bl.in1_features == bl.in2_features == result.model.a.out_features == 8


def test_functional_bilinear_with_parameter_weights() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 16)
            self.b = nn.Linear(8, 12)
            self.w = nn.Parameter(torch.randn(20, 16, 12) * 0.1)
            self.c = nn.Parameter(torch.randn(20))
            self.o = nn.Linear(20, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.o(F.bilinear(self.a(x), self.b(x), self.w, self.c))

    model, x = Net().eval(), torch.randn(4, 8)
    result = prune(model, x, ratio=0.5, importance="random", seed=4)
    assert result.model.w.shape == (10, 8, 6) and result.model.c.shape == (10,)
    keep = result.plan["params"]["w"]["keep"]
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.w[:, _removed(keep["1"], 16)] = 0
        zeroed.w[:, :, _removed(keep["2"], 12)] = 0
        zeroed.o.weight[:, _removed(keep["0"], 20)] = 0
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-5, atol=1e-6)


def test_bilinear_subclass_with_own_forward_syncs_attributes() -> None:
    class Scaled(nn.Bilinear):
        def forward(self, x1: Tensor, x2: Tensor) -> Tensor:  # type: ignore[override]
            return 0.5 * torch.bilinear(x1, x2, self.weight, self.bias)

    model = Bi()
    model.bl = Scaled(16, 12, 20)
    x = torch.randn(4, 8)
    result = prune(model.eval(), x, ratio=0.5)
    bl = result.model.bl
    assert (bl.in1_features, bl.in2_features, bl.out_features) == (8, 6, 10)
    assert result.model(x).shape == (4, 3)


def test_computed_bilinear_weight_is_refused_with_its_reason() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 4)
            self.w = nn.Parameter(torch.randn(5, 4, 4))

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            return F.bilinear(h, h, self.w * h.mean(0)[:, None])

    with pytest.raises(UnsupportedOpError, match="weight is computed"):
        prune(Net(), torch.randn(2, 8), ratio=0.5)


# --- both -----------------------------------------------------------------------------------

Inputs = Callable[[], tuple[Tensor, ...]]


def _features() -> tuple[Tensor, ...]:
    return (torch.randn(4, 8),)


CASES = [(Bag, _bag_inputs), (partial(Bag, "sum"), _flat_bag_inputs), (Bi, _features),
         (SelfBi, _features)]
IDS = ["bag", "bag_offsets", "bilinear", "self_bilinear"]


@pytest.mark.parametrize(("net", "make_inputs"), CASES, ids=IDS)
def test_ratio_zero_keeps_outputs(net: Callable[[], nn.Module], make_inputs: Inputs) -> None:
    model, inputs = net().eval(), make_inputs()
    result = prune(model, inputs, ratio=0.0)
    with torch.no_grad():
        torch.testing.assert_close(result.model(*inputs), model(*inputs), rtol=0, atol=0)
    assert _n_params(result.model) == _n_params(model)


@pytest.mark.parametrize(("net", "make_inputs"), CASES, ids=IDS)
def test_save_load_round_trip(net: Callable[[], nn.Module], make_inputs: Inputs,
                              tmp_path: Path) -> None:
    model, inputs = net().eval(), make_inputs()
    result = prune(model, inputs, ratio=0.5)
    pk.save(result, tmp_path / "out")
    loaded = pk.load(tmp_path / "out", net()).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), result.model.eval()(*inputs), rtol=0, atol=0)
    for name in ("e", "bl"):
        if hasattr(loaded, name):
            for attr in ("embedding_dim", "in1_features", "in2_features", "out_features"):
                if hasattr(getattr(loaded, name), attr):
                    assert getattr(getattr(loaded, name), attr) == \
                        getattr(getattr(result.model, name), attr)
