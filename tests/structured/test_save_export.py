"""A pruned result saves (plan + safetensors), loads onto a freshly built model with
identical outputs, and the convolutional models export to ONNX matching PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.structured.zoo import BY_NAME, ZOO, ZooEntry, call, output_tensors
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.structured import prune, prune_depth
from prunekit.zoo import LeNet5


@pytest.mark.parametrize("entry", ZOO, ids=[e.name for e in ZOO])
def test_save_load_round_trip(entry: ZooEntry, tmp_path: Path) -> None:
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.5)
    pk.save(result, tmp_path / "out")
    loaded = pk.load(tmp_path / "out", entry.build()).eval()
    with torch.no_grad():
        got_all = output_tensors(call(loaded, inputs))
        for got, want in zip(got_all, output_tensors(call(result.model, inputs)), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_depth_plan_round_trip(tmp_path: Path) -> None:
    entry = BY_NAME["resnet_basic"]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune_depth(model, inputs, remove=1)
    pk.save(result, tmp_path / "depth")
    loaded = pk.load(tmp_path / "depth", entry.build()).eval()
    with torch.no_grad():
        torch.testing.assert_close(call(loaded, inputs), call(result.model.eval(), inputs))


VISION = [e for e in ZOO if e.onnx]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("entry", VISION, ids=[e.name for e in VISION])
def test_pruned_vision_models_export_to_onnx(entry: ZooEntry, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.5)
    path = pk.export_onnx(result.model, inputs, tmp_path / f"{entry.name}.onnx",
                          exporter="torchscript")  # checks ONNX Runtime against PyTorch
    assert path.exists()


@pytest.mark.parametrize("dims", [2, 3])
def test_a_channels_last_model_stays_channels_last(dims: int, tmp_path: Path) -> None:
    """Was: the cut weights came back contiguous, so every conv of a channels-last model
    converted its weight (or its input) on each call after pruning."""
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    shape = (2, 3) + (8,) * dims

    def build() -> torch.nn.Module:
        return torch.nn.Sequential(conv(3, 16, 3, padding=1), torch.nn.ReLU(),
                                   conv(16, 8, 3, padding=1)).eval().to(memory_format=layout)

    model, x = build(), torch.randn(shape).to(memory_format=layout)
    result = prune(model, x, ratio=0.5)
    pk.save(result, tmp_path / "out")
    loaded = pk.load(tmp_path / "out", build())
    for pruned in (result.model, loaded):
        for layer in (pruned[0], pruned[2]):
            assert layer.weight.is_contiguous(memory_format=layout)
            assert not layer.weight.is_contiguous()
        with torch.no_grad():
            assert torch.equal(pruned(x), result.model(x))


def test_a_plan_made_on_a_wrapper_names_the_wrapper(tmp_path: Path) -> None:
    # loading a pruned nn.DataParallel into the bare model (or the other way round) said
    # "pass replay=False", which then failed on every key
    model, x = LeNet5().eval(), torch.randn(2, 1, 32, 32)
    pk.save(pk.prune(nn.DataParallel(model), x, ratio=0.5), tmp_path / "wrapped")
    with pytest.raises(ConfigError, match=r"made on a wrapper.*nn\.DataParallel\(MyNet\(\)\)"):
        pk.load(tmp_path / "wrapped", LeNet5())
    loaded = pk.load(tmp_path / "wrapped", nn.DataParallel(LeNet5()))
    assert loaded.module.conv1.out_channels == 3
    pk.save(pk.prune(model, x, ratio=0.5), tmp_path / "bare")
    with pytest.raises(ConfigError, match=r"pass base_model\.module"):
        pk.load(tmp_path / "bare", nn.DataParallel(LeNet5()))
    with pytest.raises(ConfigError, match="pass replay=False"):  # any other missing module
        pk.load(tmp_path / "bare", nn.Sequential(nn.Linear(2, 2)))
