"""fold_batchnorm: which conv/linear → BatchNorm pairs fold, exact outputs, error paths."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.structured import fold_batchnorm, prune, replay_plan
from prunekit.structured.fold import FoldPair, foldable_pairs


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial statistics and affine terms, so a wrong fold shows in the outputs."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.randn(n, generator=gen))
                m.bias.data.copy_(torch.randn(n, generator=gen))
    return model.eval()


def _assert_close(a: Tensor, b: Tensor) -> None:
    err = (a - b).abs().max().item()
    assert err <= 1e-5 * a.abs().max().item(), err


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 16, 1, groups=4)
        self.grouped_bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.grouped_bn(self.grouped(self.dw_bn(self.dw(self.blocks(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


def test_resnet_like_folds_every_pair_with_equal_outputs() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(ResNetLike())
    x = torch.randn(2, 3, 12, 12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model, x)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 0
    assert isinstance(folded.stem[1], nn.Identity) and isinstance(folded.blocks[0].bn2,
                                                                  nn.Identity)
    assert folded.blocks[0].conv1.bias is not None  # bias=False conv gained a bias
    with torch.no_grad():
        _assert_close(model(x), folded(x))
    # the original is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 7


class SharedOutput(nn.Module):
    """conv_a's output feeds both a BatchNorm and a side branch: folding would change it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 1)
        self.bn_a = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 1)
        self.bn_b = nn.BatchNorm2d(4)
        self.conv_c = nn.Conv2d(3, 4, 1)
        self.bn_c = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.conv_a(x)
        mid = self.conv_b(self.bn_a(a))
        if mid.shape[1] != 4 or mid.dim() != 4:  # metadata reads do not block folding
            raise RuntimeError("unexpected shape")
        b = self.bn_b(mid) + a
        c = self.conv_c(x)
        return b, c + self.bn_c(c)  # conv_c's output is read twice as well


def test_conv_output_read_elsewhere_is_not_folded() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(SharedOutput())
    x = torch.randn(2, 3, 5, 5)
    assert foldable_pairs(model, x) == [FoldPair("conv_b", "bn_b")]
    folded = fold_batchnorm(model, x)
    assert isinstance(folded.bn_a, nn.BatchNorm2d) and isinstance(folded.bn_c, nn.BatchNorm2d)
    assert isinstance(folded.bn_b, nn.Identity)
    with torch.no_grad():
        for a, b in zip(model(x), folded(x), strict=True):
            _assert_close(a, b)


class ReturnsConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.conv(x)
        return y, self.bn(y)


class BnBeforeConv(nn.Module):
    """BatchNorm on the input of a conv (pre-activation order), and a BN used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 3, 1)
        self.shared = nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.shared(self.conv(self.bn(x))) + self.shared(x)


def test_output_read_by_model_shared_bn_and_preactivation_are_not_folded() -> None:
    torch.manual_seed(0)
    assert foldable_pairs(_randomize_bn(ReturnsConv()), torch.randn(2, 2, 7)) == []
    assert foldable_pairs(_randomize_bn(BnBeforeConv()), torch.randn(1, 3, 4, 4)) == []


def test_transpose_conv1d_conv3d_and_linear_bn1d() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(nn.Sequential(
        nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, bias=False), nn.BatchNorm2d(6),
        nn.ReLU(), nn.Flatten(2), nn.Conv1d(6, 5, 3), nn.BatchNorm1d(5), nn.Flatten(1),
        nn.Linear(5 * 79, 7), nn.BatchNorm1d(7)))
    x = torch.randn(3, 4, 4, 4)
    names = [(p.producer, p.norm) for p in foldable_pairs(model, x)]
    assert names == [("0", "1"), ("4", "5"), ("7", "8")]
    folded = fold_batchnorm(model, x)
    with torch.no_grad():
        _assert_close(model(x), folded(x))
    conv3d = _randomize_bn(nn.Sequential(nn.Conv3d(2, 4, 2), nn.BatchNorm3d(4, affine=False)))
    x3 = torch.randn(1, 2, 3, 3, 3)
    folded3 = fold_batchnorm(conv3d, x3)
    assert isinstance(folded3[1], nn.Identity)
    with torch.no_grad():
        _assert_close(conv3d(x3), folded3(x3))


class AliasedBn(nn.Module):
    """The BatchNorm is registered under two names and called through the second."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.alias = self.bn

    def forward(self, x: Tensor) -> Tensor:
        return self.alias(self.conv(x))


def test_bn_under_two_names_is_replaced_at_both() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(AliasedBn())
    x = torch.randn(2, 3, 4, 4)
    folded = fold_batchnorm(model, x)
    assert isinstance(folded.bn, nn.Identity) and folded.alias is folded.bn
    with torch.no_grad():
        _assert_close(model(x), folded(x))


def test_bn_without_running_stats_and_mismatched_channels_stay() -> None:
    torch.manual_seed(0)
    # Linear on a 3-d input: BatchNorm1d normalises dim 1 (the sequence), not the features
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    assert foldable_pairs(model, torch.randn(2, 4, 4)) == []
    stats_free = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False))
    assert foldable_pairs(stats_free.eval(), torch.randn(2, 3, 2, 2)) == []


def test_fold_after_prune_keeps_plan_replayable() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(ResNetLike())
    x = torch.randn(2, 3, 12, 12)
    result = prune(model, x, ratio=0.5, ignore=[model.fc])
    folded = fold_batchnorm(result.model, x)
    with torch.no_grad():
        _assert_close(result.model(x), folded(x))
    assert folded.stem[0].out_channels == result.model.stem[0].out_channels == 4
    assert isinstance(result.model.stem[1], nn.BatchNorm2d)  # the pruned model is untouched
    replayed = copy.deepcopy(model)
    replay_plan(replayed, result.plan)
    with torch.no_grad():
        assert torch.equal(replayed(x), result.model(x))


def test_errors() -> None:
    model = ResNetLike()  # training mode
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"eval-mode model.*call model.eval\(\)"):
        fold_batchnorm(model, x)
    model.eval()
    model.stem[1].train()
    with pytest.raises(ConfigError, match=r"BatchNorm in training mode: stem\.1"):
        foldable_pairs(model, x)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got str"):
        fold_batchnorm("resnet", x)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"rtol=0 must be a positive float"):
        fold_batchnorm(model.eval(), x, rtol=0)


def test_mismatch_after_folding_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunekit.errors import PruneValidationError
    from prunekit.structured import fold

    def wrong(producer: nn.Module, norm: nn.Module) -> None:
        producer.weight.data.mul_(2.0)  # type: ignore[operator]

    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    weight = model[0].weight.clone()
    monkeypatch.setattr(fold, "_fold_into", wrong)
    with pytest.raises(PruneValidationError, match=r"output 0 differs .*your model is unchanged"):
        fold_batchnorm(model, torch.randn(1, 3, 2, 2))
    assert torch.equal(model[0].weight, weight)
