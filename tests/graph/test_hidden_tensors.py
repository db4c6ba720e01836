"""Tensors the trace does not see being made: plain tensor attributes and TorchScript modules.

A float tensor that a module holds as a plain attribute (``self.scale = torch.ones(1, C, 1,
1)``, neither parameter nor buffer) has a fixed shape like a buffer: it becomes a param node
and surgery cuts it (it used to count as a constant, so the channels it meets were pruned
and the forward check failed). A TorchScript submodule runs its ops outside Python: the
trace refuses it by name, or keeps what it touches whole with ``strict=False``.
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import ConfigError, UnsupportedOpError
from prunekit.structured import analyze


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.scale = torch.linspace(0.5, 1.5, 8).reshape(1, 8, 1, 1)  # a plain attribute
        self.window = torch.rand(1, 1, 6, 6)  # spatial: broadcast against the channels

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * self.scale * self.window


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3)
        self.block = _Scaled()
        self.head = nn.Conv2d(8, 4, 1)
        self.bias = torch.linspace(-1, 1, 8).reshape(1, 8, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.block(self.stem(x)) + self.bias)).mean((2, 3))


def test_plain_tensor_attributes_are_cut_like_buffers(tmp_path: Path) -> None:
    model, x = _Net().eval(), torch.randn(2, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5)
    pruned = result.model
    assert {"bias", "block.scale"} <= set(result.plan["params"])
    assert pruned.bias.shape == pruned.block.scale.shape == (1, 4, 1, 1)
    assert pruned.block.window.shape == (1, 1, 6, 6)  # no channel axis: kept whole
    kept = result.plan["modules"]["block.conv"]["keep"]["out"]
    assert torch.equal(pruned.block.scale.flatten(), model.block.scale.flatten()[kept])
    pk.save(result, tmp_path / "out")
    reloaded = pk.load(tmp_path / "out", _Net().eval())
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))


def test_script_submodule_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), torch.jit.script(nn.ReLU()), nn.Conv2d(8, 8, 3),
                          nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedOpError, match=r"TorchScript.*module '1'"):
        pk.prune(model, x, ratio=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pk.prune(model, x, ratio=0.5, strict=False)
    pruned = result.model
    assert pruned[0].out_channels == pruned[2].in_channels == 8  # around the script: whole
    assert pruned[2].out_channels == pruned[4].in_channels == 4  # the rest is pruned
    assert any("TorchScript" in reason for reason in result.coverage.fixed.values())


def test_script_submodule_with_parameters_is_refused_even_at_the_input() -> None:
    """A scripted conv makes channels of its own: strict refuses it by name (it came back
    with its channels silently whole, and reading the profiles crashed on the hooks a
    TorchScript module refuses); strict=False keeps them whole and profiles the model."""
    model = nn.Sequential(torch.jit.script(nn.Conv2d(3, 8, 3)), nn.ReLU(),
                          nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(2, 3, 10, 10)
    with pytest.raises(UnsupportedOpError, match=r"TorchScript.*module '0'"):
        pk.prune(model, x, ratio=0.5)
    with pytest.warns(UserWarning, match="TorchScript"):
        result = pk.prune(model, x, ratio=0.5, strict=False)
    assert result.model[2].in_channels == 8 and result.model[2].out_channels == 4
    assert 0 < result.params_kept < 1 and 0 < result.macs_kept < 1


def test_scripted_model_is_refused_with_the_fix() -> None:
    model = torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)))
    with pytest.raises(ConfigError, match=r"TorchScript module.*prune the Python module"):
        pk.prune(model, torch.randn(1, 3, 8, 8), ratio=0.5)


def test_quantized_layers_are_refused_with_the_fix() -> None:
    """Their packed integer weights are no parameters: without the refusal the model would
    come back "pruned" with nothing removed."""
    float_model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(float_model, {nn.Linear})
    with pytest.raises(ConfigError, match=r"model\.0 is a quantized layer.*prune the float "
                                          r"model, then quantize"):
        pk.prune(quantized, torch.randn(2, 8), ratio=0.5)
    assert pk.prune(float_model, torch.randn(2, 8), ratio=0.5).model[0].out_features == 8


def test_models_prepared_for_quantization_are_refused_and_float_stubs_pass() -> None:
    stubs = torch.ao.quantization
    model = nn.Sequential(stubs.QuantStub(), nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1),
                          stubs.DeQuantStub())
    x = torch.randn(2, 3, 8, 8)
    assert pk.prune(model.eval(), x, ratio=0.5).model[1].out_channels == 4
    model.qconfig = stubs.get_default_qat_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = stubs.prepare_qat(model.train())
    with pytest.raises(ConfigError, match=r"preparing the model for quantization.*prune the "
                                          r"float model before preparing it"):
        pk.prune(prepared, x, ratio=0.5)


class _FloatSkip(nn.Module):
    """DPT's and MiDaS's residual unit: ``nn.quantized.FloatFunctional`` adds floats."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(16, 1, 1)
        self.skip_add = nn.quantized.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(self.skip_add.add(self.conv(h.relu()), h))


def test_a_float_functional_adder_prunes_and_once_prepared_is_refused() -> None:
    """Was: refused as "a quantized layer", also with strict=False."""
    model, x = _FloatSkip().eval(), torch.randn(2, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.conv.out_channels == result.model.stem.out_channels == 8
    with torch.no_grad():
        assert result.model(x).shape == (2, 1, 6, 6)
    model.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = torch.ao.quantization.prepare(copy.deepcopy(model))
    with pytest.raises(ConfigError, match=r"preparing the model for quantization"):
        pk.prune(prepared, x, ratio=0.5)


class _PlainDictHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Conv2d(3, 16, 3)
        self.heads = {"a": nn.Conv2d(16, 4, 1), "b": nn.Conv2d(16, 2, 1)}  # not registered

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.trunk(x).relu()
        return [head(f) for head in self.heads.values()]


def test_a_layer_in_a_plain_dict_is_named_as_unregistered() -> None:
    """Was: "its weight is computed", which sent the user looking for a computation."""
    with pytest.raises(UnsupportedOpError, match=r"a parameter that the model does not "
                                                  r"register.*nn\.ModuleDict"):
        pk.prune(_PlainDictHeads().eval(), torch.randn(2, 3, 8, 8), ratio=0.5)


_TABLE = torch.randn(1, 5, 16)  # a module-level constant: no model tensor at all


class CastTable(nn.Module):
    """VideoMAE's ``self.pos.detach().type_as(x)``: a plain tensor attribute of the residual
    width, first read through an op, cast to the input's dtype; or the same read from a
    module-level constant, which no surgery can cut."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.a = nn.Linear(6, 16)
        self.pos = _TABLE.clone()
        self.b = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        table = self.pos if self.where == "attribute" else _TABLE
        h = self.a(x) + table.detach().type_as(x)
        return self.head(h + self.b(h))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_a_plain_attribute_read_through_an_op_is_cut_with_the_channels(
        dtype: torch.dtype) -> None:
    """Was: the detached table went unseen, so float32 kept the residual whole and
    bfloat16/float64 (a real cast) cut the residual alone and failed the forward check."""
    model, x = CastTable("attribute").to(dtype).eval(), torch.randn(2, 5, 6, dtype=dtype)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.a.out_features == result.model.b.in_features == 8
    assert result.model.pos.shape == (1, 5, 8)
    with torch.no_grad():
        assert result.model(x).shape == (2, 5, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_constant_of_the_full_width_from_outside_the_model_keeps_the_channels(
        dtype: torch.dtype) -> None:
    model, x = CastTable("module constant").to(dtype).eval(), torch.randn(2, 5, 6, dtype=dtype)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.a.out_features == 16 and result.model.b.in_features == 16
    assert any("fixed size" in why for why in result.coverage.fixed.values())


class _GrowingTable(nn.Module):
    """ESPnet's positional encoding: ``self.pe`` is a plain tensor attribute that
    ``extend_pe`` rebuilds from ``self.d_model`` when a longer input arrives."""

    def __init__(self, d_model: int, max_len: int = 6) -> None:
        super().__init__()
        self.d_model, self.pe = d_model, None
        self.extend_pe(max_len)

    def extend_pe(self, length: int) -> None:
        if self.pe is not None and self.pe.size(0) >= length:
            return
        position = torch.arange(length, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, self.d_model, 2) * (-math.log(10000.0) / self.d_model))
        self.pe = torch.cat([torch.sin(position * freq), torch.cos(position * freq)], -1)

    def forward(self, x: Tensor) -> Tensor:
        self.extend_pe(x.size(1))
        return self.pe[: x.size(1)]


class _RelPos(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.embed, self.table = nn.Linear(8, d), _GrowingTable(d)
        self.linear_pos, self.out = nn.Linear(d, d, bias=False), nn.Linear(d, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        scores = h @ self.linear_pos(self.table(h)).transpose(0, 1)
        return self.out(h) + scores.mean(-1, keepdim=True)


def test_a_tensor_cache_the_module_rebuilds_keeps_its_width() -> None:
    """Was: the table was cut with linear_pos's inputs, and an input longer than the
    cached table made the module rebuild it at d_model = 16: the pruned model crashed."""
    torch.manual_seed(0)
    model = _RelPos().eval()
    result = pk.prune(model, torch.randn(2, 5, 8), ratio=0.5)
    pruned = result.model
    assert "table.pe" not in result.plan["params"] and pruned.linear_pos.in_features == 16
    blocked = analyze(model, torch.randn(2, 5, 8)).graph.blocked.values()
    assert any("'table.pe' is rebuilt by the module's own code" in why for why in blocked)
    assert pruned.embed.out_features == 8  # what does not meet the table still prunes
    longer = torch.randn(2, 9, 8)
    with torch.no_grad():
        assert pruned(longer).shape == model(longer).shape == (2, 9, 3)


def _reversed_by_numpy(h: Tensor) -> Tensor:
    return torch.from_numpy(h.detach().numpy()[:, ::-1].copy())


class UnseenBranch(nn.Module):
    """A branch computed where the trace cannot see (NumPy here; a C/C++ extension,
    ``torch.vmap`` or a TorchScript function alike) averaged with a traced one."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.c = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        other = _reversed_by_numpy(h)
        mixed = torch.stack([h, other]).mean(0) if self.how == "stack" else \
            torch.cat([h, other], dim=0)[: x.shape[0]]
        return self.c(mixed)


@pytest.mark.parametrize("how", ["stack", "cat"])
def test_a_branch_the_trace_cannot_see_keeps_the_channels_it_meets(how: str) -> None:
    # before, the unseen branch counted as a constant that follows any width: the traced
    # branch was cut alone and the pruned model was wrong (0.13 from the zeroed one)
    torch.manual_seed(0)
    model, x = UnseenBranch(how).eval(), torch.randn(3, 16)
    with pytest.warns(UserWarning, match="did not see being made"):
        result = pk.prune(model, x, ratio=0.5)
    assert result.model.a.out_features == 32
    assert "did not see being made" in result.coverage.fixed["a.bias"]
    torch.testing.assert_close(result.model(x), model(x))


class LegacyScale(nn.Module):
    """TabNet's ``torch.sqrt(torch.FloatTensor([0.5]))``: the legacy constructor runs where
    the trace cannot see, but one element broadcasts to any width."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.o = nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Linear(16, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.sqrt(torch.FloatTensor([0.5]))
        h = torch.cat([self.bn(part) for part in self.a(x).chunk(2, 0)], 0)  # ghost BN
        return self.o(h * scale)


def test_an_unseen_one_element_tensor_fixes_no_width() -> None:
    """Before, it warned that the channels it meets are kept whole, though none were."""
    torch.manual_seed(0)
    model, x = LegacyScale().eval(), torch.randn(8, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pk.prune(model, x, ratio=0.5)
    assert result.model.a.out_features == 8
