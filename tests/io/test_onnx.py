"""export_onnx(): LeNet-5 (masked) through ONNX Runtime, inputs, atomic write, errors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, MissingDependencyError
from prunekit.io.onnx import ExportMismatchError, export_onnx
from prunekit.sparse.masks import apply_mask, masked_tensors
from prunekit.zoo import LeNet5

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run_ort(path: Path, feeds: dict[str, torch.Tensor]) -> list[Any]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def test_masked_lenet_exports_plain_weights_and_matches(
    tmp_path: Path, lenet: LeNet5, lenet_input: torch.Tensor
) -> None:
    mask = torch.rand(120, 400, generator=torch.Generator().manual_seed(0)) > 0.8
    apply_mask(lenet.fc1, "weight", mask)
    lenet.train()

    path = export_onnx(lenet, lenet_input, tmp_path / "lenet.onnx", opset=17)
    assert path == tmp_path / "lenet.onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["lenet.onnx"]
    # the user's model is untouched: still masked, still in training mode, and its masked
    # weight still works (stripping a plain deepcopy would have deleted it; see onnx.py)
    assert list(masked_tensors(lenet)) == ["fc1.weight"]
    assert lenet.training

    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["output"]
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    assert not any("parametrizations" in name for name in initializers)
    assert int((initializers["fc1.weight"] != 0).sum()) == int(mask.sum())
    assert graph.node  # a real graph, opset recorded
    assert onnx.load(str(path)).opset_import[0].version == 17

    (got,) = _run_ort(path, {"input": lenet_input})
    with torch.no_grad():
        want = lenet.eval()(lenet_input)
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-4)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": self.a(x) + self.b(y), "a": self.a(x)}


@pytest.mark.parametrize("as_dict", [False, True])
def test_tuple_and_dict_inputs(tmp_path: Path, as_dict: bool) -> None:
    torch.manual_seed(0)
    model = TwoInputs().eval()
    x, y = torch.randn(2, 4), torch.randn(2, 5)
    path = export_onnx(model, {"x": x, "y": y} if as_dict else (x, y), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    names = ["x", "y"] if as_dict else ["input_0", "input_1"]
    assert [i.name for i in graph.input] == names
    assert [o.name for o in graph.output] == ["output_sum", "output_a"]
    got = _run_ort(path, dict(zip(names, (x, y), strict=True)))
    with torch.no_grad():
        want = model(x, y)
    torch.testing.assert_close(torch.from_numpy(got[0]), want["sum"], atol=1e-5, rtol=1e-4)


def test_mismatch_raises_and_keeps_existing_file(
    tmp_path: Path, lenet: LeNet5, lenet_input: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "lenet.onnx"
    target.write_bytes(b"previous export")

    class Perturbed(ort.InferenceSession):  # type: ignore[misc, name-defined]
        def run(self, *args: Any, **kwargs: Any) -> list[Any]:
            return [out + 0.5 for out in super().run(*args, **kwargs)]

    monkeypatch.setattr(ort, "InferenceSession", Perturbed)
    with pytest.raises(ExportMismatchError, match=r"max abs diff 0\.5 exceeds atol=0\.0001"):
        export_onnx(lenet, lenet_input, target)
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["lenet.onnx"]

    export_onnx(lenet, lenet_input, target, check=False)  # no comparison: written
    assert target.read_bytes() != b"previous export"


def test_without_onnxruntime_warns_and_exports(
    tmp_path: Path, lenet: LeNet5, lenet_input: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "onnxruntime" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.warns(UserWarning, match="onnxruntime is not installed"):
        path = export_onnx(lenet, lenet_input, tmp_path / "m.onnx")
    assert path.is_file()


def test_missing_onnx_names_the_extra(
    tmp_path: Path, lenet: LeNet5, lenet_input: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'prunekit\[onnx\]'"):
        export_onnx(lenet, lenet_input, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    importlib.util.find_spec("onnxscript") is not None, reason="onnxscript is installed"
)
def test_dynamo_exporter_needs_onnxscript(
    tmp_path: Path, lenet: LeNet5, lenet_input: torch.Tensor
) -> None:
    with pytest.raises(MissingDependencyError, match="onnxscript"):
        export_onnx(lenet, lenet_input, tmp_path / "m.onnx", exporter="dynamo")


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"opset": 3}, ConfigError, r"opset=3 is not a valid ONNX opset"),
        ({"opset": "17"}, ConfigError, r"opset='17'"),
        ({"exporter": "jit"}, ConfigError, r"exporter='jit' .* auto, torchscript, dynamo"),
    ],
)
def test_bad_arguments(
    tmp_path: Path,
    lenet: LeNet5,
    lenet_input: torch.Tensor,
    kwargs: dict[str, Any],
    error: type[Exception],
    pattern: str,
) -> None:
    with pytest.raises(error, match=pattern):
        export_onnx(lenet, lenet_input, tmp_path / "m.onnx", **kwargs)
    with pytest.raises(TypeError, match="model must be"):
        export_onnx(lambda x: x, lenet_input, tmp_path / "m.onnx")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_graph_onnx_runtime_cannot_run_names_the_way_out(
    tmp_path: Path, lenet: LeNet5, lenet_input: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime failing to load or run the graph (it has no CPU kernel for some float64
    and bfloat16 ops) gives an error that names the fixes, instead of ORT's raw error (found
    by the workflow probe); with check=False the file is written."""

    class Failing(ort.InferenceSession):  # type: ignore[misc, name-defined]
        def run(self, *args: Any, **kwargs: Any) -> list[Any]:
            raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Conv(11) double")

    monkeypatch.setattr(ort, "InferenceSession", Failing)
    target = tmp_path / "lenet.onnx"
    with pytest.raises(ExportMismatchError, match=r"could not run the exported graph.*"
                                                  r"NOT_IMPLEMENTED.*cast it to float32 "
                                                  r"first.*check=False"):
        export_onnx(lenet, lenet_input, target)
    assert not target.exists()
    export_onnx(lenet, lenet_input, target, check=False)
    assert target.exists()


def test_a_data_parallel_wrapper_exports_its_module(tmp_path: Path, lenet: LeNet5,
                                                     lenet_input: torch.Tensor) -> None:
    path = export_onnx(nn.DataParallel(lenet.eval()), lenet_input, tmp_path / "dp.onnx",
                       exporter="torchscript")
    (out,) = _run_ort(path, {"input": lenet_input})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), lenet(lenet_input), atol=1e-5)


def test_dynamic_batch_runs_on_other_batch_sizes(tmp_path: Path, lenet: LeNet5,
                                                 lenet_input: torch.Tensor) -> None:
    """Without it the file accepts only the example's batch size (found by the workflow
    probe)."""
    fixed = export_onnx(lenet, lenet_input, tmp_path / "fixed.onnx", exporter="torchscript")
    path = export_onnx(lenet, lenet_input, tmp_path / "dyn.onnx", exporter="torchscript",
                       dynamic_batch=True)
    other = torch.randn(5, *lenet_input.shape[1:])
    (out,) = _run_ort(path, {"input": other})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), lenet.eval()(other), atol=1e-4)
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        _run_ort(fixed, {"input": other})
    with pytest.raises(TypeError, match="dynamic_batch must be True or False"):
        export_onnx(lenet, lenet_input, tmp_path / "x.onnx", dynamic_batch="yes")  # type: ignore[arg-type]
