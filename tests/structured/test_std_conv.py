"""timm's weight-standardised convs (``StdConv2d``, ``ScaledStdConv2d``: BiT, NFNet) and
transformers' BiT ``WeightStandardizedConv2d`` are pruned as convs through the adapter
registered by their class name; neither library is imported: these copies of their forward
carry the library's module path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.errors import UnsupportedOpError
from prunekit.io.checkpoint import load, save
from prunekit.structured import prune


class StdConv2d(nn.Conv2d):
    def __init__(self, cin: int, cout: int, k: int, padding: int = 0, eps: float = 1e-6) -> None:
        super().__init__(cin, cout, k, padding=padding, bias=False)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class ScaledStdConv2d(nn.Conv2d):
    def __init__(self, cin: int, cout: int, k: int, padding: int = 0) -> None:
        super().__init__(cin, cout, k, padding=padding)
        self.scale = self.weight[0].numel() ** -0.5
        self.eps = 1e-6
        self.gain = nn.Parameter(torch.rand(cout, 1, 1, 1) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              weight=(self.gain * self.scale).view(-1), training=True,
                              momentum=0.0, eps=self.eps).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class WeightStandardizedConv2d(nn.Conv2d):
    """transformers' BiT conv: the same standardisation, after an optional dynamic pad."""

    def __init__(self, cin: int, cout: int, k: int, padding: int = 0) -> None:
        super().__init__(cin, cout, k, padding=padding, bias=False)
        self.pad, self.eps = None, 1e-8

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = self.pad(x)
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


for _cls in (StdConv2d, ScaledStdConv2d):
    _cls.__module__ = "timm.layers.std_conv"
WeightStandardizedConv2d.__module__ = "transformers.models.bit.modeling_bit"


class BiTBlock(nn.Module):
    """Pre-activation residual block of standardised convs with GroupNorm, as in BiT."""

    def __init__(self, conv: type[nn.Conv2d]) -> None:
        super().__init__()
        self.stem = conv(3, 16, 3, padding=1)
        self.norm1 = nn.GroupNorm(4, 16)
        self.conv1 = conv(16, 24, 3, padding=1)
        self.norm2 = nn.GroupNorm(4, 24)
        self.conv2 = conv(24, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.conv1(F.relu(self.norm1(x)))
        x = x + self.conv2(F.relu(self.norm2(y)))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("conv", [StdConv2d, ScaledStdConv2d, WeightStandardizedConv2d])
def test_standardised_convs_prune_as_convs(conv: type[nn.Conv2d], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = BiTBlock(conv).eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        stem_out = model.stem(x)
        expected = model(x)
    same = prune(model, x, ratio=0.0, ignore=[model.head])
    with torch.no_grad():
        assert torch.equal(same.model(x), expected)
    result = prune(model, x, ratio=0.5, ignore=[model.head])
    pruned = result.model
    assert pruned.conv1.out_channels == 12 == pruned.conv1.weight.shape[0]
    assert pruned.stem.out_channels == 8 == pruned.conv2.out_channels
    assert pruned.conv1.in_channels == 8 == pruned.conv1.weight.shape[1]
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    if conv is ScaledStdConv2d:
        kept = result.plan["modules"]["conv1"]["keep"]["out"]
        assert torch.equal(pruned.conv1.gain, model.conv1.gain[kept])
        assert pruned.conv1.scale == model.conv1.scale  # the kept weights keep their scale
    # output channels are standardised row by row: the stem's kept rows are exact
    kept_stem = result.plan["modules"]["stem"]["keep"]["out"]
    with torch.no_grad():
        assert torch.allclose(pruned.stem(x), stem_out[:, kept_stem], atol=1e-6)
        assert pruned(x).shape == (2, 5)
    save(result, tmp_path / "p")
    torch.manual_seed(0)
    loaded = load(tmp_path / "p", BiTBlock(conv).eval())
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_the_adapter_is_chosen_by_timms_class_path() -> None:
    class Local(StdConv2d):  # same forward, another module path: traced op by op
        pass

    Local.__module__ = __name__
    model, x = BiTBlock(Local).eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedOpError, match=r"weight is computed.*register_adapter\("
                                                 r"MyStdConv, prunekit\.structured\."
                                                 r"adapters_timm\.StdConvAdapter\(\)\)"):
        prune(model, x, ratio=0.5, ignore=[model.head])
    # the fix the error names (the user's own copy of timm's class is then a conv)
    from prunekit.structured import register_adapter
    from prunekit.structured.adapters_timm import StdConvAdapter

    register_adapter(Local, StdConvAdapter())
    assert prune(model, x, ratio=0.5, ignore=[model.head]).params_kept < 0.7


def test_a_conv_with_a_computed_weight_on_the_model_input_is_not_skipped_silently() -> None:
    """Its input (the model input) is fixed, but its output channels would have been
    prunable: strict refuses it, strict=False warns and says why in the coverage."""

    class Local(StdConv2d):
        pass

    Local.__module__ = __name__
    model, x = BiTBlock(Local).eval(), torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="weight is computed"), \
            pytest.warns(UserWarning, match="prune removed nothing"):
        result = prune(model, x, ratio=0.5, ignore=[model.head], strict=False)
    assert "weight is computed" in str(result.coverage)
    assert not result.plan["modules"]


class HyperConv(nn.Module):
    """A hypernetwork: the conv's kernel is another layer's output (SOLOv2's dynamic
    kernels, CondConv): no weight standardisation, which the error named."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.hyper = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(4, 8 * 8 * 9)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        kernel = self.hyper(z).view(8, 8, 3, 3)
        return self.head(F.conv2d(torch.relu(self.stem(x)), kernel, padding=1))


def test_a_kernel_made_by_another_layer_is_named_as_such() -> None:
    torch.manual_seed(0)
    model, inputs = HyperConv().eval(), (torch.randn(2, 3, 6, 6), torch.randn(4))
    with pytest.raises(UnsupportedOpError, match=r"computed from the model's inputs or another "
                                                 r"layer's output \(a hypernetwork") as info:
        prune(model, inputs, ratio=0.5)
    assert "StdConv" not in str(info.value)
    result = prune(model, inputs, ratio=0.5, strict=False)  # the way out it names
    assert result.model.stem.out_channels == 8 and result.model(*inputs).shape == (2, 2, 6, 6)
