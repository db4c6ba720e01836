"""convert: decisions forced by an injected cost, outputs equal the masked dense model's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit.sparse.kernels as kernels
from prunekit.errors import ConfigError
from prunekit.io.onnx import export_onnx
from prunekit.sparse.convert import Candidate, MeasuredCost, convert, to_dense
from prunekit.sparse.kernels import SparseConv2d, SparseLinear
from prunekit.sparse.masks import masked_tensors
from prunekit.sparse.sparsify import sparsify
from prunekit.zoo import LeNet5


def sparse_wins(candidate: Candidate) -> float:
    return 10.0 if candidate.backend == "dense" else {"csr": 1.0}.get(candidate.backend, 2.0)


def dense_wins(candidate: Candidate) -> float:
    return 1.0 if candidate.backend == "dense" else 1.5


def _mlp(sparsity: float = 0.9) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 10)).eval()
    sparsify(model, sparsity)
    return model


def _lenet(sparsity: float = 0.9) -> LeNet5:
    torch.manual_seed(0)
    model = LeNet5().eval()
    sparsify(model, sparsity)
    return model


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


@pytest.mark.parametrize("batch", [1, 5])
def test_converted_mlp_matches_masked_model(batch: int) -> None:
    model = _mlp()
    x = torch.randn(batch, 64)
    report = convert(model, x, cost=sparse_wins)
    assert report.converted == ["0", "2", "4"]
    assert all(isinstance(report.model.get_submodule(n), SparseLinear) for n in report.converted)
    assert {d.backend for d in report.layers} == {"csr"}
    with torch.no_grad():
        _assert_close(report.model(x), model(x))
        x3 = torch.randn(3, 7, 64)  # leading dims other than batch
        _assert_close(report.model(x3), model(x3))
    assert masked_tensors(model), "the user's model keeps its masks (a copy was converted)"


@pytest.mark.parametrize("backend", ["csr", "bsr", "coo"])
def test_every_kernel_matches_on_lenet(backend: str, lenet_input: torch.Tensor) -> None:
    model = _lenet()
    report = convert(model, lenet_input, cost=sparse_wins, backends=[backend], min_sparsity=0)
    # bsr needs 4x4 blocks: conv1 (6x25), conv2 (16x150) and fc3 (10x84) do not tile
    expected = {"fc1", "fc2"} if backend == "bsr" else {"conv1", "conv2", "fc1", "fc2", "fc3"}
    assert set(report.converted) == expected
    assert isinstance(report.model.conv2, SparseConv2d) is (backend != "bsr")
    with torch.no_grad():
        _assert_close(report.model(lenet_input), model(lenet_input))
        _assert_close(report.model(lenet_input[:1]), model(lenet_input[:1]))
        one = lenet_input[0]  # an unbatched image through the unfold path
        _assert_close(report.model.conv1(one), model.conv1(one))


def test_keeps_layers_dense_when_sparse_is_slower() -> None:
    model = _mlp()
    x = torch.randn(4, 64)
    report = convert(model, x, cost=dense_wins)
    assert report.converted == []
    assert all("min_speedup" in d.reason for d in report.layers)
    assert all(type(m) is not SparseLinear for m in report.model.modules())
    assert report.layers[0].dense_ms == (1.0,) and report.layers[0].sparse_ms["csr"] == (1.5,)


def test_every_batch_size_must_pay() -> None:
    def fast_at_batch_one(candidate: Candidate) -> float:
        sparse = candidate.backend != "dense"
        if candidate.inputs.shape[0] == 1:
            return 1.0 if sparse else 4.0
        return 5.0 if sparse else 4.0

    model = _mlp()
    only_one = convert(model, torch.randn(2, 64), batch_sizes=[1], cost=fast_at_batch_one)
    assert len(only_one.converted) == 3 and only_one.layers[0].speedup == 4.0
    both = convert(model, torch.randn(2, 64), batch_sizes=[1, 64], cost=fast_at_batch_one)
    assert both.converted == []
    assert both.layers[0].batch_sizes == (1, 64)
    assert "0.80x" in both.layers[0].reason


def test_min_speedup_threshold_is_inclusive_and_thin_layers_stay() -> None:
    model = _mlp(0.3)
    report = convert(model, torch.randn(2, 64), cost=sparse_wins)
    assert report.converted == []
    assert all("min_sparsity" in d.reason for d in report.layers)
    report = convert(model, torch.randn(2, 64), cost=sparse_wins, min_sparsity=0.2)
    assert len(report.converted) == 3


def test_layers_not_run_and_unsupported_convs_stay_dense() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Conv2d(4, 8, 3, groups=2)
            self.unused = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    torch.manual_seed(0)
    model = Net().eval()
    sparsify(model, 0.9, scope="layer")
    report = convert(model, torch.randn(1, 4, 6, 6), cost=sparse_wins)
    reasons = {d.name: d.reason for d in report.layers}
    assert "groups=2" in reasons["used"]
    assert reasons["unused"] == "not executed on example_inputs"


def test_a_wrong_kernel_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass(frozen=True)
    class Negated:
        name: str = "negated"

        def unsupported(self, weight: torch.Tensor) -> str | None:
            return None

        def pack(self, weight: torch.Tensor) -> torch.Tensor:
            return (-weight).to_sparse_csr()

    monkeypatch.setitem(kernels._KERNELS, "negated", Negated())
    report = convert(_mlp(), torch.randn(2, 64), cost=sparse_wins, backends=["negated"])
    assert report.converted == []
    assert "differs from the dense layer" in report.layers[0].reason


def test_inplace_and_to_dense(lenet_input: torch.Tensor) -> None:
    model = _lenet()
    with torch.no_grad():
        want = model(lenet_input)
    report = convert(model, lenet_input, cost=sparse_wins, inplace=True, min_sparsity=0)
    assert report.model is model and not masked_tensors(model)
    assert model.fc1.weight.layout == torch.sparse_csr and not model.fc1.weight.requires_grad
    assert model.state_dict()["fc1.weight"].layout == torch.sparse_csr
    dense = to_dense(model)
    assert isinstance(model.fc1, SparseLinear), "to_dense works on a copy by default"
    assert type(dense.fc1) is nn.Linear and type(dense.conv2) is nn.Conv2d
    with torch.no_grad():
        _assert_close(dense(lenet_input), want)
    assert isinstance(to_dense(SparseLinear(nn.Linear(3, 2), kernels.get_kernel("coo"))),
                      nn.Linear)


def test_measured_cost_runs() -> None:
    report = convert(_mlp(0.95), torch.randn(1, 64), cost=MeasuredCost(warmup=1, repeats=2),
                     rounds=1, threads=1)
    assert report.threads == 1
    assert all(len(d.dense_ms) == 1 and d.dense_ms[0] > 0 for d in report.layers)
    assert all(d.backend == "dense" or d.speedup >= 1.1 for d in report.layers)
    assert "speedup" in report.table()


def test_argument_errors() -> None:
    model, x = _mlp(), torch.randn(2, 64)
    with pytest.raises(ConfigError, match="min_speedup"):
        convert(model, x, min_speedup=0)
    with pytest.raises(ConfigError, match="batch_sizes"):
        convert(model, x, batch_sizes=[0])
    with pytest.raises(ConfigError, match=r"backend=.bogus.*csr"):
        convert(model, x, backends=["bogus"])
    with pytest.raises(ConfigError, match="rounds"):
        convert(model, x, rounds=0)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        convert("model", x)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="already registered"):
        kernels.register_kernel(kernels.get_kernel("csr"))


def test_sparse_models_export_to_onnx(tmp_path: Path, lenet_input: torch.Tensor) -> None:
    pytest.importorskip("onnxruntime")
    model = _lenet()
    export_onnx(model, lenet_input, tmp_path / "masked.onnx", exporter="torchscript")
    report = convert(model, lenet_input, cost=sparse_wins, min_sparsity=0)
    with pytest.raises(Exception):  # noqa: B017 - torch's exporter has no sparse CSR ops
        export_onnx(report.model, lenet_input, tmp_path / "csr.onnx", exporter="torchscript")
    export_onnx(to_dense(report.model), lenet_input, tmp_path / "back.onnx",
                exporter="torchscript")
    assert (tmp_path / "back.onnx").stat().st_size > 0


def test_hopeless_kernels_are_dropped_after_one_round() -> None:
    calls: list[tuple[str, str, int]] = []

    def coo_hopeless(candidate: Candidate) -> float:
        assert isinstance(candidate.inputs, torch.Tensor)
        calls.append((candidate.layer, candidate.backend, candidate.inputs.shape[0]))
        return {"dense": 1.0, "csr": 0.5, "converted": 0.5}.get(candidate.backend, 3.0)

    report = convert(_mlp(), torch.randn(2, 64), batch_sizes=[1, 8], cost=coo_hopeless,
                     backends=["csr", "coo"], rounds=3)
    assert report.layers[0].backend == "csr" and "coo" not in report.layers[0].sparse_ms
    first_layer = [(backend, n) for layer, backend, n in calls if layer == "0"]
    assert first_layer.count(("coo", 1)) == 1 and ("coo", 8) not in first_layer
    assert first_layer.count(("csr", 8)) == 3
    assert report.model_ms == (1.0, 0.5)
    whole = [(backend, n) for layer, backend, n in calls if layer == "<model>"]
    assert sorted(set(whole)) == [("converted", 1), ("converted", 8), ("dense", 1), ("dense", 8)]


def test_reverted_when_the_whole_model_is_not_faster() -> None:
    def layers_win_model_loses(candidate: Candidate) -> float:
        if candidate.layer == "<model>":
            return 1.0 if candidate.backend == "dense" else 1.2
        return sparse_wins(candidate)

    model = _mlp()
    x = torch.randn(2, 64)
    report = convert(model, x, cost=layers_win_model_loses)
    assert report.converted == [] and report.model_ms == (1.0, 1.2)
    assert all("reverted: whole model 1.200 ms converted > 1.000 ms dense" in d.reason
               for d in report.layers)
    assert all(type(m) is not SparseLinear for m in report.model.modules())
    with torch.no_grad():
        assert torch.equal(report.model(x), model(x))


def test_masked_layers_without_a_kernel_are_listed() -> None:
    class MyLinear(nn.Linear):
        pass

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 8, 3), nn.Flatten(), MyLinear(48, 4)).eval()
    sparsify(model, 0.9, layers=(nn.Conv1d, nn.Linear), scope="layer")
    report = convert(model, torch.randn(1, 2, 8), cost=sparse_wins)
    assert {d.name: d.reason for d in report.layers} == {
        "0": "no sparse kernel for this layer type", "2": "no sparse kernel for this layer type"}
    assert report.layers[0].sparsity == pytest.approx(0.9, abs=0.05)
    with pytest.raises(ConfigError, match=r"backends=\['csr'\]"):
        convert(model, torch.randn(1, 2, 8), backends="csr")
    with pytest.raises(TypeError, match="cost must be a callable"):
        convert(model, torch.randn(1, 2, 8), cost=3.0)  # type: ignore[arg-type]
