"""Structured pruning of weight-normed layers (``parametrizations.weight_norm``) is exact.

The cut layer stays weight-normed with the same ``dim``; ``v`` is cut like the weight and
``g`` is sliced along ``dim`` or rescaled by ``‖v'‖ / ‖v‖``, so the pruned model equals the
unpruned one with the removed channels' inputs zeroed. Any other parametrization and the
hook-based ``torch.nn.utils.weight_norm`` are refused with a message that names them.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm, spectral_norm, weight_norm

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.importance import calibrated
from prunekit.structured import apply_plan, prune
from prunekit.structured.pruning import PruneResult


class Chain(nn.Module):
    """in-layer → act → weight-normed middle layer → act → weight-normed head, plus a
    weight-normed layer inside a residual: the middle layer is cut on both sides, the head
    on its input, the residual layer on both with one group."""

    def __init__(self, kind: str, dim: int | None) -> None:
        super().__init__()
        conv = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "convT1d": nn.ConvTranspose1d}
        if kind == "linear":
            make: Callable[[int, int], nn.Module] = nn.Linear
        else:
            make = lambda cin, cout: conv[kind](cin, cout, 3, padding=1)  # noqa: E731
        self.kind = kind
        self.stem = make(3, 10)
        self.mid = weight_norm(make(10, 12), dim=dim)
        self.res = weight_norm(make(12, 12), dim=dim)
        self.head = weight_norm(make(12, 4), dim=dim)

    def forward(self, x: Tensor) -> Tensor:
        y = F.gelu(self.mid(F.gelu(self.stem(x))))
        y = y + self.res(y)
        return self.head(y)


def _inputs(kind: str) -> Tensor:
    gen = torch.Generator().manual_seed(1)
    shape = {"linear": (4, 3), "conv1d": (2, 3, 9), "conv2d": (2, 3, 6, 5),
             "convT1d": (2, 3, 7)}[kind]
    return torch.randn(*shape, generator=gen)


class TinyWav2Vec2(nn.Module):
    """wav2vec2's shape: a strided conv feature extractor, a projection, the positional
    conv (grouped, ``weight_norm(dim=2)``) added residually, a feed-forward block, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(1, 16, 5, stride=2), nn.GELU(),
                                      nn.Conv1d(16, 16, 3, stride=2), nn.GELU())
        self.projection = nn.Linear(16, 24)
        self.pos_conv = weight_norm(nn.Conv1d(24, 24, 5, padding=2, groups=4), dim=2)
        self.ff_in, self.ff_out = nn.Linear(24, 40), nn.Linear(40, 24)
        self.head = nn.Linear(24, 6)

    def forward(self, audio: Tensor) -> Tensor:
        h = self.projection(self.features(audio[:, None]).transpose(1, 2))
        h = h + F.gelu(self.pos_conv(h.transpose(1, 2))).transpose(1, 2)
        h = h + self.ff_out(F.gelu(self.ff_in(h)))
        return self.head(h)


def _wav2vec2_inputs() -> Tensor:
    return torch.randn(2, 64, generator=torch.Generator().manual_seed(2))


CASES = [("conv1d", d) for d in (0, 1, 2, None, -2)] + \
        [("conv2d", d) for d in (0, 1, 3, None)] + \
        [("linear", d) for d in (0, 1, None)] + \
        [("convT1d", d) for d in (0, 1, 2, None)]


def _build(kind: str, dim: int | None) -> nn.Module:
    torch.manual_seed(0)
    model = Chain(kind, dim).eval()
    with torch.no_grad():  # g away from ‖v‖, so a g left unscaled changes the weights
        for module in (model.mid, model.res, model.head):
            module.parametrizations.weight.original0.mul_(1.7)
    return model


def _normed(model: nn.Module) -> dict[str, int]:
    return {name: module.parametrizations.weight[0].dim for name, module in model.named_modules()
            if parametrize.is_parametrized(module)}


def _assert_equivalent(model: nn.Module, result: PruneResult, inputs: Tensor) -> None:
    """The pruned model equals ``model`` with weight norm baked in and the removed
    channels' inputs zeroed."""
    plain = copy.deepcopy(model)
    for module in [m for m in plain.modules() if parametrize.is_parametrized(m)]:
        # a deep copy shares torch's injected Parametrized<Cls> class, whose property
        # remove_parametrizations deletes: give the copy its own first
        cls = type(module)
        module.__class__ = type(cls.__name__, cls.__bases__, {
            k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")})
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    zeroed = _zero_removed_inputs(plain, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(inputs), zeroed(inputs), rtol=1e-5, atol=1e-5)


def _effective_weight_kept(model: nn.Module, result: PruneResult, name: str) -> None:
    """The cut layer's weight is the old one's kept rows and columns, to rounding."""
    old, new = model.get_submodule(name), result.model.get_submodule(name)
    keep = result.plan["modules"][name]["keep"]
    transposed = getattr(old, "transposed", False)
    out_axis, in_axis = (1, 0) if transposed else (0, 1)
    with torch.no_grad():
        want = old.weight
        for dim, axis in (("out", out_axis), ("in", in_axis)):
            if dim in keep:
                want = want.index_select(axis, torch.tensor(keep[dim]))
        torch.testing.assert_close(new.weight, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("kind", "dim"), CASES, ids=[f"{k}-dim{d}" for k, d in CASES])
def test_weight_normed_layers_prune_exactly(kind: str, dim: int | None) -> None:
    model, inputs = _build(kind, dim), _inputs(kind)
    before = copy.deepcopy(model.state_dict())
    result = prune(model, inputs, ratio=0.5, importance="random", seed=3)

    assert set(result.plan["modules"]) >= {"mid", "res", "head"}
    with torch.no_grad():
        assert result.model(inputs).shape == model(inputs).shape
    assert sum(p.numel() for p in result.model.parameters()) < \
        sum(p.numel() for p in model.parameters())
    assert _normed(result.model) == _normed(model)  # still weight-normed, same dims
    for name in ("mid", "res", "head"):
        _effective_weight_kept(model, result, name)
    _assert_equivalent(model, result, inputs)
    # the user's model is untouched
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("kind", ["conv1d", "linear"])
def test_g_is_sliced_along_dim_and_rescaled_across_it(kind: str) -> None:
    model, inputs = _build(kind, 0), _inputs(kind)  # dim 0: "out" is the norm's dim
    result = prune(model, inputs, ratio=0.5, importance="random", seed=3)
    keep = result.plan["modules"]["mid"]["keep"]
    old = model.mid.parametrizations.weight
    new = result.model.mid.parametrizations.weight
    out_keep, in_keep = torch.tensor(keep["out"]), torch.tensor(keep["in"])
    v_cut = old.original1.index_select(0, out_keep).index_select(1, in_keep)
    assert torch.equal(new.original1, v_cut)  # v is cut, not renormalised
    # dim 0: g keeps its kept rows, scaled by how much of each row's norm is left
    ratio = torch.norm_except_dim(v_cut, 2, 0) / \
        torch.norm_except_dim(old.original1, 2, 0).index_select(0, out_keep)
    torch.testing.assert_close(new.original0, old.original0.index_select(0, out_keep) * ratio)


def test_only_the_norm_dim_cut_slices_g_bit_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(6, 8)), nn.ReLU(), nn.Linear(8, 3)).eval()
    inputs = torch.randn(4, 6)
    result = prune(model, inputs, ratio=0.5, importance="random", seed=1)
    keep = torch.tensor(result.plan["modules"]["0"]["keep"]["out"])
    old, new = model[0].parametrizations.weight, result.model[0].parametrizations.weight
    assert torch.equal(new.original0, old.original0.index_select(0, keep))
    assert torch.equal(new.original1, old.original1.index_select(0, keep))


@pytest.mark.parametrize(("kind", "dim"), [("conv1d", 2), ("linear", None), ("convT1d", 1)])
def test_ratio_zero_leaves_outputs_identical(kind: str, dim: int | None) -> None:
    model, inputs = _build(kind, dim), _inputs(kind)
    result = prune(model, inputs, ratio=0.0)
    assert result.plan["modules"] == {}
    with torch.no_grad():
        assert torch.equal(result.model(inputs), model(inputs))
    assert _normed(result.model) == _normed(model)


@pytest.mark.parametrize(("kind", "dim"), [("conv1d", 2), ("conv2d", 0), ("linear", None),
                                           ("convT1d", 1)])
def test_save_load_reproduces_outputs(kind: str, dim: int | None, tmp_path: Path) -> None:
    model, inputs = _build(kind, dim), _inputs(kind)
    result = prune(model, inputs, ratio=0.5)
    assert any(".parametrizations.weight.original0" in k for k in result.model.state_dict())
    pk.save(result, tmp_path / "wn")
    loaded = pk.load(tmp_path / "wn", _build(kind, dim)).eval()
    assert _normed(loaded) == _normed(model)
    with torch.no_grad():
        assert torch.equal(loaded(inputs), result.model(inputs))


@pytest.mark.parametrize(("kind", "dim"), [("conv1d", 2), ("linear", 0)])
def test_training_step_after_pruning(kind: str, dim: int | None) -> None:
    model, inputs = _build(kind, dim), _inputs(kind)
    pruned = prune(model, inputs, ratio=0.5).model.train()
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.1)
    before = pruned(inputs).detach()
    pruned(inputs).square().mean().backward()
    chain = pruned.mid.parametrizations.weight
    assert chain.original0.grad is not None and chain.original1.grad is not None
    assert chain.original0.grad.shape == chain.original0.shape
    optimizer.step()
    after = pruned(inputs).detach()
    assert torch.isfinite(after).all() and not torch.equal(after, before)


def test_inplace_and_budget_search_cut_weight_norm_alike() -> None:
    inputs = _inputs("conv1d")
    copied = prune(_build("conv1d", 2), inputs, ratio=0.5)
    model = _build("conv1d", 2)
    result = prune(model, inputs, ratio=0.5, inplace=True)
    assert result.model is model and _normed(model) == {"mid": 2, "res": 2, "head": 2}
    with torch.no_grad():
        assert torch.equal(model(inputs), copied.model(inputs))
    searched = prune(_build("conv1d", 2), inputs, target={"params": 0.5})
    assert searched.params_kept <= 0.5 and _normed(searched.model) == _normed(model)


def test_wav2vec2_like_positional_conv() -> None:
    torch.manual_seed(0)
    model, inputs = TinyWav2Vec2().eval(), _wav2vec2_inputs()
    with torch.no_grad():
        model.pos_conv.parametrizations.weight.original0.mul_(0.6)
    result = prune(model, inputs, ratio=0.5, importance="random", seed=5)
    assert "pos_conv" in result.plan["modules"]
    assert result.model.pos_conv.out_channels < 24 and result.model.pos_conv.groups == 4
    assert _normed(result.model) == {"pos_conv": 2}
    with torch.no_grad():
        assert result.model(inputs).shape == model(inputs).shape
    assert result.params_kept < 0.75
    _assert_equivalent(model, result, inputs)


def test_wav2vec2_like_save_load_and_ratio_zero(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, inputs = TinyWav2Vec2().eval(), _wav2vec2_inputs()
    with torch.no_grad():
        assert torch.equal(prune(model, inputs, ratio=0.0).model(inputs), model(inputs))
    result = prune(model, inputs, ratio=0.5)
    pk.save(result, tmp_path / "w2v")
    torch.manual_seed(7)  # a differently initialised fresh model: the weights come from disk
    loaded = pk.load(tmp_path / "w2v", TinyWav2Vec2()).eval()
    with torch.no_grad():
        assert torch.equal(loaded(inputs), result.model(inputs))


def test_spectral_norm_is_still_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), spectral_norm(nn.Linear(8, 3))).eval()
    with pytest.raises(ConfigError, match="_SpectralNorm") as info:
        prune(model, torch.randn(4, 6), ratio=0.5)
    assert "remove_parametrizations" in str(info.value)


class _Scale(nn.Module):
    def forward(self, w: Tensor) -> Tensor:
        return w * 2


def test_weight_norm_chained_with_another_parametrization_is_refused() -> None:
    torch.manual_seed(0)
    layer = weight_norm(nn.Linear(8, 3))
    parametrize.register_parametrization(layer, "weight", _Scale())
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), layer).eval()
    with pytest.raises(ConfigError, match=r"2\.weight \(_WeightNorm, _Scale\)"):
        prune(model, torch.randn(4, 6), ratio=0.5)


def test_prunekit_mask_is_still_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    pk.sparsify(model, sparsity=0.5)
    with pytest.raises(ConfigError, match="WeightMask"):
        prune(model, torch.randn(4, 6), ratio=0.5)


def _legacy(layer: nn.Module, dim: int) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(layer, dim=dim)


def test_hook_based_weight_norm_is_refused_with_the_switch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), _legacy(nn.Conv1d(8, 4, 3), 2))
    inputs = torch.randn(2, 3, 9)
    for strict in (True, False):
        with pytest.raises(ConfigError, match="deprecated hook-based") as info:
            prune(model, inputs, ratio=0.5, strict=strict)
        message = str(info.value)
        assert "model.get_submodule('2')" in message
        assert "parametrizations.weight_norm(m, 'weight', dim=2)" in message


def test_replaying_a_plan_on_hook_based_weight_norm_is_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), weight_norm(nn.Linear(8, 3))).eval()
    plan = prune(model, torch.randn(4, 6), ratio=0.5).plan
    legacy = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), _legacy(nn.Linear(8, 3), 0))
    plan = {**plan, "modules": {**plan["modules"], "2": {**plan["modules"]["2"],
                                                         "type": "Linear"}}}
    with pytest.raises(ConfigError, match="deprecated hook-based"):
        apply_plan(legacy, plan)
    assert legacy[2].weight_v.shape == (3, 8)  # nothing was cut


def test_weight_norm_class_is_the_one_torch_registers() -> None:
    # the structured engine recognises weight norm by this (private) class: fail loudly if
    # torch renames it
    layer = weight_norm(nn.Linear(2, 2))
    assert type(layer.parametrizations.weight[0]) is _WeightNorm


def test_removing_the_pruned_copys_weight_norm_leaves_the_original_alone() -> None:
    """``deepcopy`` shares torch's ``Parametrized<Cls>`` class, whose properties
    ``remove_parametrizations`` deletes: the pruned copy has a class of its own."""
    model, x = Chain("conv1d", 0).eval(), _inputs("conv1d")
    with torch.no_grad():
        expected = model(x)
    pruned = prune(model, x, ratio=0.5).model
    parametrize.remove_parametrizations(pruned.mid, "weight")
    assert not parametrize.is_parametrized(pruned.mid)
    assert parametrize.is_parametrized(model.mid) and type(model.mid) is not type(pruned.mid)
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_hook_based_spectral_norm_is_refused_with_the_call_that_bakes_it_in() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(),
                          torch.nn.utils.spectral_norm(nn.Conv2d(8, 4, 3)))
    with pytest.raises(ConfigError, match=r"hook-based torch\.nn\.utils\.spectral_norm") as info:
        prune(model, torch.randn(2, 3, 9, 9), ratio=0.5)
    assert "remove_spectral_norm(model.get_submodule('2'), 'weight')" in str(info.value)
    torch.nn.utils.remove_spectral_norm(model[2])
    assert prune(model, torch.randn(2, 3, 9, 9), ratio=0.5).model[0].out_channels == 4


def _baked(model: nn.Module) -> nn.Module:
    """``model`` with weight norm baked into plain weights (same outputs)."""
    plain = copy.deepcopy(model)
    for module in [m for m in plain.modules() if parametrize.is_parametrized(m)]:
        cls = type(module)  # (its own injected class: see _assert_equivalent)
        module.__class__ = type(cls.__name__, cls.__bases__, {
            k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")})
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return plain


def _keeps(result: PruneResult) -> dict[str, dict[str, list[int]]]:
    return {name: entry["keep"] for name, entry in result.plan["modules"].items()}


GRAD_CASES = [("linear", 0), ("conv1d", 1), ("conv1d", None), ("convT1d", 0)]


@pytest.mark.parametrize(("kind", "dim"), GRAD_CASES,
                         ids=[f"{k}-dim{d}" for k, d in GRAD_CASES])
def test_the_weights_gradient_comes_from_g_and_v(kind: str, dim: int | None) -> None:
    # the effective weight has no .grad: gradient criteria once scored its bias alone
    from prunekit._weight_norm_grad import leaf_grad_weight
    model, x = _build(kind, dim), _inputs(kind)
    plain = _baked(model)
    for net in (model, plain):
        net(x).square().sum().backward()
    for name in ("mid", "res", "head"):
        chain = model.get_submodule(name).parametrizations.weight
        torch.testing.assert_close(leaf_grad_weight(chain), plain.get_submodule(name).weight.grad,
                                   rtol=1e-4, atol=1e-5)
    for importance in ("taylor", "grad"):
        plans = [_keeps(prune(net, x, ratio=0.5, importance=importance))
                 for net in (model, plain)]
        assert plans[0] == plans[1]


@pytest.mark.parametrize("importance", ["taylor", "fisher"])
def test_calibrated_statistics_of_weight_normed_weights(importance: str) -> None:
    # E|g| and E[g²] are not linear in g's and v's: every batch's gradient is converted
    model, x = _build("conv1d", 1), _inputs("conv1d")
    plain = _baked(model)
    batches = [(torch.randn(2, 3, 9, generator=torch.Generator().manual_seed(s)),)
               for s in range(3)]

    def loss(net: nn.Module, batch: tuple[Tensor]) -> Tensor:
        return net(batch[0]).square().mean()

    plans, stats = [], []
    for net in (model, plain):
        with calibrated(net, importance, data=batches, loss_fn=loss) as held:
            plans.append(_keeps(prune(net, x, ratio=0.5, importance=importance)))
            stats.append(held["mid.weight"])
        assert all(p.grad is None for p in net.parameters())  # put back on exit
    torch.testing.assert_close(stats[0], stats[1], rtol=1e-4, atol=1e-6)
    assert plans[0] == plans[1]
