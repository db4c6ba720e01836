"""save/load: bit-exact round trips, masks that survive training, atomic replacement, errors."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import prunekit.io.checkpoint as checkpoint
import prunekit.structured
from prunekit.errors import ConfigError
from prunekit.io.checkpoint import CheckpointError, load, load_manifest, save
from prunekit.sparse.masks import apply_mask, masked_tensors
from prunekit.zoo import LeNet5


def _masked_lenet() -> LeNet5:
    torch.manual_seed(0)
    model = LeNet5().eval()
    gen = torch.Generator().manual_seed(3)
    apply_mask(model.fc1, "weight", torch.rand(120, 400, generator=gen) > 0.7)
    apply_mask(model.conv2, "weight", torch.rand(16, 6, 5, 5, generator=gen) > 0.5)
    return model


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def test_plain_round_trip_is_bit_exact(
    tmp_path: Path, lenet: LeNet5, lenet_input: torch.Tensor
) -> None:
    out = save(lenet, tmp_path / "ckpt", metadata={"accuracy": 0.98, "note": "baseline"})
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "prunekit.json"]
    restored = load(out, LeNet5().eval())
    _assert_same_state(lenet, restored)
    assert torch.equal(lenet(lenet_input), restored(lenet_input))
    manifest = load_manifest(out)
    assert manifest["metadata"] == {"accuracy": 0.98, "note": "baseline"}
    assert manifest["model_class"] == "prunekit.zoo.lenet.LeNet5"
    assert manifest["format_version"] == checkpoint.FORMAT_VERSION
    assert manifest["torch_version"] == torch.__version__
    assert manifest["plan"] is None


def test_masked_round_trip_keeps_masks_through_training(
    tmp_path: Path, lenet_input: torch.Tensor
) -> None:
    model = _masked_lenet()
    save(model, tmp_path / "ckpt")
    stored = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert stored["fc1.parametrizations.weight.0.mask"].dtype == torch.bool
    assert json.loads((tmp_path / "ckpt" / "prunekit.json").read_text())["masked"] == {
        "conv2.weight": "conv2.parametrizations.weight.0.mask",
        "fc1.weight": "fc1.parametrizations.weight.0.mask",
    }

    restored = load(tmp_path / "ckpt", LeNet5().eval())
    _assert_same_state(model, restored)
    assert torch.equal(model(lenet_input), restored(lenet_input))
    masks = masked_tensors(restored)
    assert sorted(masks) == ["conv2.weight", "fc1.weight"]

    opt = torch.optim.SGD(restored.parameters(), lr=0.5)
    restored.train()
    restored(lenet_input).square().sum().backward()
    opt.step()
    for name, mask in masks.items():
        module_name, _, tensor_name = name.rpartition(".")
        weight = getattr(restored.get_submodule(module_name), tensor_name)
        assert torch.all(weight[~mask] == 0), name
        assert torch.count_nonzero(weight) == int(mask.sum())


def test_tied_weights_are_stored_once_and_restored(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 6, bias=False)
            self.head = nn.Linear(4, 6, bias=False)
            self.head.weight = self.embed.weight

    torch.manual_seed(0)
    model = Tied()
    save(model, tmp_path / "ckpt")
    assert set(load_file(str(tmp_path / "ckpt" / "model.safetensors"))) == {"embed.weight"}
    assert load_manifest(tmp_path / "ckpt")["aliases"] == {"head.weight": "embed.weight"}
    restored = load(tmp_path / "ckpt", Tied())
    _assert_same_state(model, restored)
    assert restored.head.weight is restored.embed.weight


def test_pruning_result_plan_is_stored_and_replayed(
    tmp_path: Path, lenet: LeNet5, monkeypatch: pytest.MonkeyPatch
) -> None:
    @dataclass
    class Result:
        model: nn.Module
        plan: dict[str, Any]

    plan = {"version": 1, "steps": [{"group": "conv1", "remove": [0, 3]}]}
    save(Result(lenet, plan), tmp_path / "ckpt")
    assert load_manifest(tmp_path / "ckpt")["plan"] == plan

    calls: list[Any] = []

    def fake_replay(model: nn.Module, replayed: Any) -> None:
        calls.append(replayed)

    monkeypatch.setattr(prunekit.structured, "replay_plan", fake_replay, raising=False)
    restored = load(tmp_path / "ckpt", LeNet5())
    assert calls == [plan]
    _assert_same_state(lenet, restored)

    calls.clear()
    load(tmp_path / "ckpt", LeNet5(), replay=False)  # base_model already has the shapes
    assert calls == []


def test_failed_save_leaves_old_checkpoint_intact(
    tmp_path: Path, lenet: LeNet5, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "ckpt"
    save(lenet, target, metadata={"run": 1})
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def crash(tensors: dict[str, torch.Tensor], filename: str, **kwargs: Any) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save(_masked_lenet(), target, metadata={"run": 2})
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left behind
    _assert_same_state(lenet, load(target, LeNet5()))


def test_failed_swap_puts_old_checkpoint_back(
    tmp_path: Path, lenet: LeNet5, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "ckpt"
    save(lenet, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real_rename = checkpoint.os.rename

    def rename(src: Any, dst: Any) -> None:
        if ".tmp-" in str(src):  # the new directory moving in
            raise OSError("power cut")
        real_rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "rename", rename)
    with pytest.raises(OSError, match="power cut"):
        save(_masked_lenet(), target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_replacing_a_checkpoint_works_and_cleans_up(tmp_path: Path, lenet: LeNet5) -> None:
    target = tmp_path / "ckpt"
    save(lenet, target)
    save(_masked_lenet(), target)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert sorted(load_manifest(target)["masked"]) == ["conv2.weight", "fc1.weight"]


def test_interrupted_swap_is_pointed_to(tmp_path: Path) -> None:
    (tmp_path / ".ckpt.old-123abc").mkdir()
    with pytest.raises(FileNotFoundError, match=r"previous checkpoint at .*\.ckpt\.old-123abc"):
        load(tmp_path / "ckpt", LeNet5())


def test_refuses_to_replace_foreign_paths(tmp_path: Path, lenet: LeNet5) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a prunekit checkpoint"):
        save(lenet, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        save(lenet, tmp_path / "file")
    (tmp_path / "empty").mkdir()
    save(lenet, tmp_path / "empty")


def test_load_errors(tmp_path: Path, lenet: LeNet5) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nowhere", LeNet5())
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no prunekit\.json"):
        load(tmp_path / "bare", LeNet5())

    target = save(lenet, tmp_path / "ckpt")
    with pytest.raises(ConfigError, match=r"base_model is None.*prunekit\.zoo\.lenet\.LeNet5"):
        load(target)
    with pytest.raises(TypeError, match=r"base_model must be a torch\.nn\.Module"):
        load(target, "LeNet5")  # type: ignore[arg-type]

    wider = LeNet5(num_classes=12)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(
        ConfigError,
        match=r"'fc3\.weight' has shape \(10, 84\) in the checkpoint but \(12, 84\) in "
        r"base_model; build base_model .* same constructor arguments",
    ):
        load(target, wider)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())

    with pytest.raises(ConfigError, match=r"not in base_model 'conv1\.bias'"):
        load(target, nn.Sequential())

    masked = save(_masked_lenet(), tmp_path / "masked")
    plain = LeNet5()
    with pytest.raises(ConfigError, match="shape"):
        load(masked, LeNet5(in_channels=3))
    load(masked, plain)
    assert sorted(masked_tensors(plain)) == ["conv2.weight", "fc1.weight"]

    (target / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        load(target, LeNet5())


def test_manifest_errors(tmp_path: Path, lenet: LeNet5) -> None:
    target = save(lenet, tmp_path / "ckpt")
    manifest_path = target / "prunekit.json"
    manifest = json.loads(manifest_path.read_text())

    manifest_path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(CheckpointError, match=r"format_version 99 .* upgrade prunekit"):
        load(target, LeNet5())
    manifest_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_manifest(target)
    manifest_path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a prunekit checkpoint manifest"):
        load_manifest(target)
    manifest_path.write_text(json.dumps({**manifest, "masked": ["fc1.weight"]}))
    with pytest.raises(CheckpointError, match=r"field 'masked' must map tensor names"):
        load_manifest(target)
    manifest_path.write_text(json.dumps({**manifest, "aliases": {"fc2.weight": "nope"}}))
    with pytest.raises(CheckpointError, match=r"lacks 'nope', which 'fc2\.weight' aliases"):
        load(target, LeNet5())


class _Versioned(nn.Module):
    """Reads its state_dict version on load and refuses a state without one, as torchvision's
    MNASNet does (it checks the version before upgrading an old layout)."""

    _version = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 4, 1)
        self.versions_seen: list[Any] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)))

    def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: Any,
                              *args: Any) -> None:
        version = local_metadata.get("version", None)
        self.versions_seen.append(version)
        if version not in (1, 2):
            raise ValueError(f"version should be set to 1 or 2 instead of {version}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def test_each_modules_state_version_is_saved_and_given_back_on_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Versioned().eval()
    x = torch.randn(2, 3, 8, 8)
    result = prunekit.structured.prune(model, x, ratio=0.5, ignore=[model.head])
    target = save(result, tmp_path / "ckpt")
    manifest = json.loads((target / "prunekit.json").read_text())
    assert manifest["state_metadata"][""] == {"version": 2}
    assert manifest["state_metadata"]["conv"] == {"version": 1}

    fresh = _Versioned()
    loaded = load(target, fresh)
    assert fresh.versions_seen == [2]
    assert torch.equal(loaded(x), result.model(x))

    # a checkpoint written before the versions were stored loads as it did (no metadata)
    del manifest["state_metadata"]
    (target / "prunekit.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="version should be set to 1 or 2 instead of None"):
        load(target, _Versioned())
    manifest["state_metadata"] = {"": 2}
    (target / "prunekit.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"field 'state_metadata' must map module names"):
        load(target, _Versioned())


class _Scaled(nn.Module):
    """A per-channel buffer the plan cuts directly, and an attention block swapped on cut."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3)
        self.register_buffer("scale", torch.linspace(0.5, 2, 16).view(1, 16, 1, 1))
        self.att = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c2(self.c1(x).relu() * self.scale).relu().flatten(2).transpose(1, 2)
        return self.fc(self.att(h, h, h)[0].mean(1))


def _fresh() -> _Scaled:
    torch.manual_seed(0)
    return _Scaled().eval()


def test_a_model_pruned_twice_reloads_through_both_plans(tmp_path: Path) -> None:
    """Iterative pruning: the checkpoint holds every plan that made the model, oldest first,
    and load replays them in turn (before, only the last plan was kept, and replaying it on a
    fresh model failed for a cut buffer or a swapped attention; found by the workflow
    probe). A model pk.load gave carries its plans into the next prune and save, and a
    pruned model saved without its result reloads too."""
    x = torch.randn(2, 3, 10, 10)
    first = prunekit.structured.prune(_fresh(), x, ratio=0.5)
    second = prunekit.structured.prune(first.model, x, ratio=0.5)
    target = save(second, tmp_path / "twice")
    manifest = json.loads((target / "prunekit.json").read_text())
    assert manifest["plan"] is None and len(manifest["plans"]) == 2
    with torch.no_grad():
        assert torch.equal(load(target, _fresh())(x), second.model(x))
        reloaded = load(save(first, tmp_path / "once"), _fresh())
        third = prunekit.structured.prune(reloaded, x, ratio=0.5)
        again = load(save(third.model, tmp_path / "thrice"), _fresh())
        assert torch.equal(again(x), third.model(x))
        assert again.scale.shape[1] == third.model.scale.shape[1] < 8
    with pytest.raises(ConfigError, match="pass replay=False"):
        load(target, second.model)
    assert torch.equal(load(target, copy.deepcopy(second.model), replay=False)(x),
                       second.model(x))


def test_save_errors(tmp_path: Path, lenet: LeNet5) -> None:
    with pytest.raises(TypeError, match=r"obj must be a torch\.nn\.Module or a pruning result"):
        save({"weights": 1}, tmp_path / "a")
    with pytest.raises(ConfigError, match="metadata must be JSON-serialisable"):
        save(lenet, tmp_path / "b", metadata={"tensor": torch.ones(1)})
    with pytest.raises(ConfigError, match="metadata must be JSON-serialisable"):
        save(lenet, tmp_path / "c", metadata={"loss": float("nan")})
    with pytest.raises(TypeError, match="metadata must be a dict"):
        save(lenet, tmp_path / "d", metadata=[1, 2])  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_masked_root_module_and_already_masked_base(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    apply_mask(model, "weight", torch.tensor([[1, 0, 1, 0]] * 3, dtype=torch.bool))
    target = save(model, tmp_path / "ckpt")
    manifest = load_manifest(target)
    assert manifest["masked"] == {"weight": "parametrizations.weight.0.mask"}
    assert manifest["model_class"] == "torch.nn.modules.linear.Linear"
    _assert_same_state(model, load(target, nn.Linear(4, 3)))

    base = nn.Linear(4, 3)
    apply_mask(base, "weight", torch.ones(3, 4, dtype=torch.bool))  # replaced by the stored mask
    _assert_same_state(model, load(target, base))


@pytest.mark.gpu
def test_cuda_model_round_trip(tmp_path: Path, lenet_input: torch.Tensor) -> None:
    model = _masked_lenet().cuda()
    save(model, tmp_path / "ckpt")
    restored = load(tmp_path / "ckpt", LeNet5().eval().cuda())
    x = lenet_input.cuda()
    assert torch.equal(model(x), restored(x))
    assert all(m.device.type == "cuda" for m in masked_tensors(restored).values())


class _SparseGraph(nn.Module):
    """A GCN holding its normalised adjacency as a sparse buffer (pygcn, LightGCN)."""

    def __init__(self, layout: str, nodes: int = 10) -> None:
        super().__init__()
        adjacency = (torch.rand(nodes, nodes) < 0.3).float() + torch.eye(nodes)
        adjacency = adjacency / adjacency.sum(1, keepdim=True)
        self.register_buffer("adj", adjacency.to_sparse() if layout == "coo"
                             else adjacency.to_sparse_csr())
        self.l1, self.l2 = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.adj @ torch.relu(self.l1(x)))


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_a_sparse_buffer_of_the_model_round_trips(layout: str, tmp_path: Path) -> None:
    """Before, save refused it, blaming prunekit.sparse.convert, which the user never
    called."""
    torch.manual_seed(0)
    model, x = _SparseGraph(layout).eval(), torch.randn(10, 6)
    result = prunekit.structured.prune(model, x, ratio=0.5)
    save(result, tmp_path / "gcn")
    manifest = load_manifest(tmp_path / "gcn")
    assert manifest["format_version"] == checkpoint.LAYOUT_FORMAT_VERSION
    assert manifest["layouts"]["adj"] == {"layout": f"sparse_{layout}", "shape": [10, 10]}
    torch.manual_seed(1)  # another graph: only the checkpoint can restore this one
    loaded = load(tmp_path / "gcn", _SparseGraph(layout))
    assert loaded.adj.layout == model.adj.layout and loaded.l1.out_features == 8
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
