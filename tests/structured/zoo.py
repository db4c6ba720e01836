"""Small but architecturally faithful models for testing the structured-pruning graph.

Each entry reproduces how a real network family couples channels, heads or hidden units
(residual adds, concats, grouped/depthwise convs, channel shuffles, attention heads, tied
weights, ...) at a size where one CPU forward pass takes milliseconds. Builders and inputs
draw from fixed seeds inside ``torch.random.fork_rng``, so they neither depend on nor
disturb the global RNG. Norm layers get random statistics and affine terms, so a pruner
that slices the wrong channels of a norm changes the output instead of hiding behind
the identity defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tests.structured.zoo_detect import YOLOLike
from torch import Tensor, nn

from prunekit._inputs import run_model
from prunekit.zoo import lenet5

Inputs = Tensor | tuple[Tensor, ...] | dict[str, Tensor]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: ``build()`` gives a fresh seeded model (train mode), ``example_inputs()``
    its inputs: a Tensor (``model(x)``), a tuple (``model(*x)``) or a dict (``model(**x)``).

    ``onnx`` marks the vision/conv models that ``torch.onnx.export`` handles cleanly.
    """

    name: str
    build: Callable[[], nn.Module]
    example_inputs: Callable[[], Inputs]
    onnx: bool
    notes: str


call = run_model  # model(x), model(*x) or model(**x), as the entry's inputs imply


def output_tensors(out: object) -> list[Tensor]:
    """Every tensor of a (nested) model output; dict entries in sorted-key order."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in output_tensors(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in output_tensors(item)]
    return []


def _randomize_norms(model: nn.Module) -> None:
    """Random running stats and affine terms for every norm layer (see module docstring)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        norm_types = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, RMSNorm)
        if not isinstance(m, norm_types):
            continue
        with torch.no_grad():
            if isinstance(m.weight, nn.Parameter):
                m.weight.uniform_(0.5, 1.5)
            bias = getattr(m, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.normal_(0.0, 0.1)


def _seeded_build(factory: Callable[[], nn.Module], seed: int = 0) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory()
            _randomize_norms(model)
        return model

    return build


def _seeded_inputs(factory: Callable[[], Inputs], seed: int = 1) -> Callable[[], Inputs]:
    def make() -> Inputs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return factory()

    return make


def _cbr(
    cin: int,
    cout: int,
    k: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: Callable[[], nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv2d (no bias) → BatchNorm2d → activation (none for a linear bottleneck)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --- plain conv nets --------------------------------------------------------------------


class VGGSmall(nn.Module):
    """VGG with BN: conv-BN-ReLU stacks and max-pools, flatten, two-layer classifier."""

    def __init__(self, cfg: tuple[int | str, ...] = (16, 16, "M", 32, 32, "M", 64, "M")) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(v, int)
                layers.extend(_cbr(c, v))
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(c * 4 * 4, 64), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(64, 10)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1,
                 base_width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck; ``groups``/``base_width`` turn it into ResNeXt's."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1,
                 base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """CIFAR-style ResNet/ResNeXt: 3×3 stem, three stages, global pool, fc."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int],
                 planes: tuple[int, int, int], groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        stages: list[nn.Module] = []
        cin = 16
        for i, (n, p) in enumerate(zip(layers, planes, strict=True)):
            blocks: list[nn.Module] = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(cin, p, stride, groups, base_width))
                cin = p * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- mobile nets ------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_cbr(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            _cbr(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            _cbr(hidden, cout, 1, act=None),  # linear bottleneck
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        settings = ((1, 8, 1, 1), (6, 16, 2, 2), (6, 24, 2, 2), (6, 32, 1, 1))  # t, c, n, s
        layers: list[nn.Module] = [_cbr(3, 16, 3, 2, act=nn.ReLU6)]
        cin = 16
        for t, c, n, s in settings:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_cbr(cin, 128, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(128, 10))

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return x * scale


class MobileNetV3Block(nn.Module):
    def __init__(self, cin: int, k: int, expanded: int, cout: int, use_se: bool,
                 act: type[nn.Module], stride: int) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_cbr(cin, expanded, 1, act=act))
        layers.append(_cbr(expanded, expanded, k, stride, groups=expanded, act=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, max(8, expanded // 4)))
        layers.append(_cbr(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        hs, re = nn.Hardswish, nn.ReLU
        cfg = (  # cin, k, expanded, cout, se, act, stride
            (16, 3, 16, 16, True, re, 2),
            (16, 3, 48, 24, False, re, 2),
            (24, 3, 64, 24, False, re, 1),
            (24, 5, 96, 40, True, hs, 2),
            (40, 5, 120, 40, True, hs, 1),
        )
        self.features = nn.Sequential(
            _cbr(3, 16, 3, 2, act=hs),
            *(MobileNetV3Block(*c) for c in cfg),
            _cbr(40, 120, 1, act=hs),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(120, 128), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(128, 10)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        bf = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _cbr(cin, cin, 3, stride, groups=cin, act=None), _cbr(cin, bf, 1)
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            _cbr(cin if stride > 1 else bf, bf, 1),
            _cbr(bf, bf, 3, stride, groups=bf, act=None),
            _cbr(bf, bf, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _cbr(3, 24, 3, 2)
        self.stage2 = nn.Sequential(ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1),
                                    ShuffleUnit(48, 48, 1))
        self.stage3 = nn.Sequential(ShuffleUnit(48, 96, 2), ShuffleUnit(96, 96, 1))
        self.conv5 = _cbr(96, 128, 1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv5(self.stage3(self.stage2(self.conv1(x))))
        return self.fc(x.mean([2, 3]))


# --- multi-branch / concat nets ---------------------------------------------------------


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.conv1(F.relu(self.norm1(torch.cat(features, 1))))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.ModuleList):
    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self:
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self, growth: int = 8, bn_size: int = 2) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = DenseBlock([DenseLayer(16 + i * growth, growth, bn_size) for i in range(3)])
        self.transition1 = nn.Sequential(  # BN-ReLU-1×1 conv halving channels, 2×2 avg-pool
            nn.BatchNorm2d(40), nn.ReLU(), nn.Conv2d(40, 20, 1, bias=False), nn.AvgPool2d(2)
        )
        self.block2 = DenseBlock([DenseLayer(20 + i * growth, growth, bn_size) for i in range(3)])
        self.norm5 = nn.BatchNorm2d(44)
        self.classifier = nn.Linear(44, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.transition1(self.block1(self.conv0(x))))
        x = F.adaptive_avg_pool2d(F.relu(self.norm5(x)), 1)
        return self.classifier(torch.flatten(x, 1))


class InceptionModule(nn.Module):
    def __init__(self, cin: int, c1: int, c3: tuple[int, int], c5: tuple[int, int],
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = _cbr(cin, c1, 1)
        self.branch2 = nn.Sequential(_cbr(cin, c3[0], 1), _cbr(c3[0], c3[1], 3))
        self.branch3 = nn.Sequential(_cbr(cin, c5[0], 1), _cbr(c5[0], c5[1], 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), _cbr(cin, pool_proj, 1))

    def forward(self, x: Tensor) -> Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([b(x) for b in branches], 1)


class InceptionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 24, 3, 2)
        self.inception3a = InceptionModule(24, 8, (8, 16), (4, 8), 8)  # → 40
        self.maxpool = nn.MaxPool2d(2)
        self.inception4a = InceptionModule(40, 16, (12, 24), (4, 8), 8)  # → 56
        self.fc = nn.Linear(56, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inception4a(self.maxpool(self.inception3a(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_cbr(cin, cout), _cbr(cout, cout))


class UNet(nn.Module):
    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.enc1, self.enc2 = _double_conv(3, 8), _double_conv(8, 16)
        self.enc3 = _double_conv(16, 32)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(32, 64)
        self.up3, self.dec3 = nn.ConvTranspose2d(64, 32, 2, 2), _double_conv(64, 32)
        self.up2, self.dec2 = nn.ConvTranspose2d(32, 16, 2, 2), _double_conv(32, 16)
        self.up1, self.dec1 = nn.ConvTranspose2d(16, 8, 2, 2), _double_conv(16, 8)
        self.out = nn.Conv2d(8, n_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        b = self.bottleneck(self.pool(e3))
        d3 = self.dec3(torch.cat([self.up3(b), e3], 1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)


class FPN(nn.Module):
    """Three-stage backbone, 1×1 laterals, nearest-upsampled top-down adds, 3×3 outputs."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.c2 = nn.Sequential(_cbr(3, 16, 3, 2), _cbr(16, 16))
        self.c3 = nn.Sequential(_cbr(16, 32, 3, 2), _cbr(32, 32))
        self.c4 = _cbr(32, 64, 3, 2)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in (16, 32, 64))
        self.output = nn.ModuleList(nn.Conv2d(width, width, 3, 1, 1) for _ in range(3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c2 = self.c2(x)
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        p4 = self.lateral[2](c4)
        p3 = self.lateral[1](c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        p2 = self.lateral[0](c2) + F.interpolate(p3, size=c2.shape[-2:], mode="nearest")
        return self.output[0](p2), self.output[1](p3), self.output[2](p4)


class FCOSLike(nn.Module):
    """FPN plus one GroupNorm head tower shared by every level; per-level outputs
    flattened and concatenated like RetinaNet/FCOS anchors."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.fpn = FPN(32)
        self.tower = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.GroupNorm(8, 32), nn.ReLU())
        self.cls_logits = nn.Conv2d(32, num_classes, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(32, 4, 3, 1, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        towers = [self.tower(p) for p in self.fpn(x)]
        cls = torch.cat([self.cls_logits(t).flatten(2) for t in towers], 2)
        box = torch.cat([self.bbox_pred(t).flatten(2) for t in towers], 2)
        return {"cls_logits": cls.transpose(1, 2), "bbox_regression": box.transpose(1, 2)}


# --- vision transformers and friends ----------------------------------------------------


class ViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.self_attention(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    def __init__(self, image: int = 32, patch: int = 4, dim: int = 64, heads: int = 4,
                 depth: int = 2) -> None:
        super().__init__()
        n = (image // patch) ** 2
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        cls = self.class_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.blocks(x))[:, 0])


def window_partition(x: Tensor, ws: int) -> Tensor:
    """(B, H, W, C) → (B·nW, ws·ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.embed_dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * ws - 1) ** 2, num_heads) * 0.02
        )
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
        coords = coords.flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        # (dy, dx) ∈ [0, 2ws-2]² → row of the bias table
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1],
                             persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b_, n, _ = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        index = self.relative_position_index.view(-1)  # type: ignore[operator]
        bias = self.relative_position_bias_table[index].view(n, n, -1).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b_ // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, n, n)
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b_, n, self.num_heads * self.head_dim)
        return self.proj(x)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, num_heads: int, window_size: int,
                 shift_size: int) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        mask = None
        if shift_size > 0:  # tokens rolled in from the far edge may not attend across the seam
            region = torch.zeros(1, resolution, resolution, 1)
            cuts = (slice(0, -window_size), slice(-window_size, -shift_size),
                    slice(-shift_size, None))
            for i, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
                region[:, hs, ws, :] = i
            mw = window_partition(region, window_size).squeeze(-1)
            mask = (mw[:, None, :] - mw[:, :, None]).ne(0).float() * -100.0
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        _, h, w, _ = x.shape
        s, ws = self.shift_size, self.window_size
        y = self.norm1(x)
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(y, ws), self.attn_mask), ws, h, w)
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        parts = (x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2])
        return self.reduction(self.norm(torch.cat(parts, -1)))


class SwinTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 32, 4, 4)
        self.patch_norm = nn.LayerNorm(32)
        self.stage1 = nn.Sequential(SwinBlock(32, 8, 2, 4, 0), SwinBlock(32, 8, 2, 4, 2))
        self.merge = PatchMerging(32)
        self.stage2 = SwinBlock(64, 4, 4, 4, 0)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_norm(self.patch_embed(x).permute(0, 2, 3, 1))
        x = self.norm(self.stage2(self.merge(self.stage1(x))))
        return self.head(x.mean((1, 2)))


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # random, not the usual 1e-6, so a mis-sliced scale shows in the output
        self.gamma = nn.Parameter(torch.empty(dim).uniform_(0.5, 1.0))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 4, 4), LayerNorm2d(32, eps=1e-6))
        self.stage1 = nn.Sequential(ConvNeXtBlock(32), ConvNeXtBlock(32))
        self.downsample = nn.Sequential(LayerNorm2d(32, eps=1e-6), nn.Conv2d(32, 64, 2, 2))
        self.stage2 = ConvNeXtBlock(64)
        self.norm = nn.LayerNorm(64, eps=1e-6)
        self.head = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage2(self.downsample(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((-2, -1))))


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 32), nn.GELU(), nn.Linear(32, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class MLPMixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 4, 4)
        self.blocks = nn.Sequential(MixerBlock(64, 32), MixerBlock(64, 32))
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(x).mean(1))


# --- sequence models --------------------------------------------------------------------


class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int = 100) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 32, padding_idx=0)
        self.lstm = nn.LSTM(32, 48, num_layers=2, batch_first=True, dropout=0.1)
        self.fc = nn.Linear(48, 4)

    def forward(self, input_ids: Tensor) -> Tensor:
        _, (h_n, _) = self.lstm(self.embedding(input_ids))
        return self.fc(h_n[-1])


class BiGRUClassifier(nn.Module):
    def __init__(self, vocab: int = 100) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 32)
        self.gru = nn.GRU(32, 32, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * 32, 4)

    def forward(self, input_ids: Tensor) -> Tensor:
        _, h_n = self.gru(self.embedding(input_ids))
        return self.fc(torch.cat([h_n[-2], h_n[-1]], dim=1))  # last layer, fwd ‖ bwd


class TransformerEncoderClassifier(nn.Module):
    def __init__(self, vocab: int = 100, dim: int = 64, max_len: int = 16) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, 4)

    def forward(self, input_ids: Tensor) -> Tensor:
        x = self.embedding(input_ids) + self.pos[:, : input_ids.shape[1]]
        x = self.encoder(x, src_key_padding_mask=input_ids.eq(0))
        return self.fc(x.mean(1))


class CausalSelfAttention(nn.Module):
    """GPT-2 attention: ``embed_dim`` is the width of each of q/k/v in the fused ``c_attn``."""

    def __init__(self, embed_dim: int, num_heads: int, max_len: int, use_sdpa: bool) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.use_sdpa = use_sdpa
        self.c_attn = nn.Linear(embed_dim, 3 * embed_dim)
        self.c_proj = nn.Linear(embed_dim, embed_dim)
        self.register_buffer("bias", torch.tril(torch.ones(max_len, max_len, dtype=torch.bool)),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.c_attn(x).split(self.embed_dim, dim=2)
        q, k, v = (z.view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        if self.use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            att = att.masked_fill(~self.bias[:t, :t], float("-inf"))  # type: ignore[index]
            y = att.softmax(-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class GPTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int, use_sdpa: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, max_len, use_sdpa)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 64, heads: int = 4, depth: int = 2,
                 max_len: int = 32, tie: bool = False, use_sdpa: bool = True) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(max_len, dim)
        self.h = nn.ModuleList(GPTBlock(dim, heads, max_len, use_sdpa) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight

    def forward(self, input_ids: Tensor) -> Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]  # type: ignore[index]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    """Pairs dim i with i + head_dim/2: head_dim can only be pruned in such pairs."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int) -> None:
        super().__init__()
        self.hidden_size = hidden
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.num_key_value_heads = num_kv_heads
        self.q_proj = nn.Linear(hidden, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        groups = self.num_heads // self.num_key_value_heads  # q head i reads kv head i // groups
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class LlamaMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, intermediate: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(hidden)
        self.self_attn = LlamaAttention(hidden, heads, kv_heads)
        self.post_attention_layernorm = RMSNorm(hidden)
        self.mlp = LlamaMLP(hidden, intermediate)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, vocab: int = 128, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                 intermediate: int = 128, depth: int = 2) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(hidden, heads, kv_heads, intermediate) for _ in range(depth)
        )
        self.norm = RMSNorm(hidden)
        self.rotary_emb = RotaryEmbedding(hidden // heads)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        cos, sin = self.rotary_emb(position_ids)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


# --- interface oddities: dict I/O, frozen parts, several inputs, control flow -----------


class TextImageModel(nn.Module):
    """Either modality alone gives its own logits; both also give joint logits."""

    def __init__(self, vocab: int = 100) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.text_proj = nn.Sequential(nn.Linear(32, 32), nn.GELU())
        self.vision = nn.Sequential(_cbr(3, 16, 3, 2), _cbr(16, 32, 3, 2))
        self.text_head = nn.Linear(32, 5)
        self.image_head = nn.Linear(32, 5)
        self.joint_head = nn.Linear(32, 5)

    def forward(self, input_ids: Tensor | None = None,
                pixel_values: Tensor | None = None) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        t = i = None
        if input_ids is not None:
            t = self.text_proj(self.embed(input_ids)).mean(1)
            out["text_logits"] = self.text_head(t)
        if pixel_values is not None:
            i = self.vision(pixel_values).mean((2, 3))
            out["image_logits"] = self.image_head(i)
        if t is not None and i is not None:
            out["logits"] = self.joint_head(t + i)
        return out


class FrozenBackboneNet(nn.Module):
    """Frozen backbone; a prior branch run under ``no_grad`` (so autograd-based tracing
    sees no edge to it) added to a trainable adapter branch."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(_cbr(3, 16), _cbr(16, 32, 3, 2))
        self.backbone.requires_grad_(False)
        self.prior = nn.Conv2d(32, 32, 1)
        self.adapter = _cbr(32, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        f = self.backbone(x)
        with torch.no_grad():
            prior = self.prior(f)
        y = self.adapter(f) + prior
        return self.head(y.mean((2, 3)))


class M5(nn.Module):
    """M5 raw-waveform classifier: wide strided first Conv1d, then 3-tap convs."""

    def __init__(self) -> None:
        super().__init__()

        def stage(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv1d(cin, cout, k, stride), nn.BatchNorm1d(cout), nn.ReLU(),
                    nn.MaxPool1d(4)]

        self.features = nn.Sequential(
            *stage(1, 16, 80, 4), *stage(16, 16, 3), *stage(16, 32, 3), *stage(32, 32, 3),
            nn.AdaptiveAvgPool1d(1),
        )
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


class SeparableConv1dBlock(nn.Module):
    """MatchboxNet/QuartzNet block: depthwise-separable Conv1d ×2, projected residual."""

    def __init__(self, cin: int, cout: int, k: int, dilation: int = 1) -> None:
        super().__init__()
        pad = dilation * (k // 2)
        self.dw1 = nn.Conv1d(cin, cin, k, padding=pad, dilation=dilation, groups=cin, bias=False)
        self.pw1 = nn.Conv1d(cin, cout, 1, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.dw2 = nn.Conv1d(cout, cout, k, padding=pad, dilation=dilation, groups=cout,
                             bias=False)
        self.pw2 = nn.Conv1d(cout, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.residual = nn.Sequential(nn.Conv1d(cin, cout, 1, bias=False), nn.BatchNorm1d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.pw1(self.dw1(x))))
        return F.relu(self.bn2(self.pw2(self.dw2(y))) + self.residual(x))


class SpectrogramNet(nn.Module):
    def __init__(self, n_mels: int = 40) -> None:
        super().__init__()
        self.prolog = nn.Sequential(nn.Conv1d(n_mels, 32, 5, 2, 2, bias=False),
                                    nn.BatchNorm1d(32), nn.ReLU())
        self.blocks = nn.Sequential(SeparableConv1dBlock(32, 32, 9),
                                    SeparableConv1dBlock(32, 48, 7, dilation=2))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(48, 12)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.prolog(x))), 1))


class Conv3DNet(nn.Module):
    """r3d-style video net: (3,7,7) stem, a residual 3-D block, strided projection stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, 16, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False), nn.BatchNorm3d(16),
            nn.ReLU(), nn.MaxPool3d((1, 2, 2)),
        )
        self.block = nn.Sequential(
            nn.Conv3d(16, 16, 3, padding=1, bias=False), nn.BatchNorm3d(16), nn.ReLU(),
            nn.Conv3d(16, 16, 3, padding=1, bias=False), nn.BatchNorm3d(16),
        )
        self.down = nn.Sequential(nn.Conv3d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm3d(32),
                                  nn.ReLU())
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        return self.fc(torch.flatten(self.pool(self.down(x)), 1))


class ImageMetaNet(nn.Module):
    """forward(image, meta): meta FiLM-modulates conv channels, then features concatenate."""

    def __init__(self, meta_dim: int = 8) -> None:
        super().__init__()
        self.conv = nn.Sequential(_cbr(3, 16, 3, 2), _cbr(16, 32, 3, 2))
        self.film = nn.Linear(meta_dim, 2 * 32)  # rows [0, 32) scale, [32, 64) shift
        self.meta_mlp = nn.Sequential(nn.Linear(meta_dim, 16), nn.ReLU())
        self.fc = nn.Linear(32 + 16, 10)

    def forward(self, image: Tensor, meta: Tensor) -> Tensor:
        f = self.conv(image)
        scale, shift = self.film(meta).chunk(2, dim=1)
        f = f * scale[:, :, None, None] + shift[:, :, None, None]
        return self.fc(torch.cat([f.mean((2, 3)), self.meta_mlp(meta)], dim=1))


class ControlFlowNet(nn.Module):
    """Shape-dependent resize, ModuleList loop with an index-parity branch, a block reused."""

    def __init__(self) -> None:
        super().__init__()
        self.input_size = 32
        self.stem = _cbr(3, 16)
        self.blocks = nn.ModuleList(_cbr(16, 16) for _ in range(3))
        self.shared = _cbr(16, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False)
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x) + x if i % 2 == 0 else block(x)
        for _ in range(2):
            x = x + self.shared(x)
        return self.head(x.mean((2, 3)))


class SplitGLUNet(nn.Module):
    """GLU halves, an uneven torch.split with a pass-through slice, per-channel PReLU and a
    one-channel spatial gate broadcast over all channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 32)
        self.glu_conv = nn.Conv2d(32, 64, 3, 1, 1)  # out channel c gated by channel c + 32
        self.prelu = nn.PReLU(32)
        self.conv_a = _cbr(8, 8)
        self.conv_b = _cbr(16, 16, 3, groups=4)
        self.spatial_gate = nn.Conv2d(32, 1, 7, padding=3)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(F.glu(self.glu_conv(self.stem(x)), dim=1))
        a, b, c = torch.split(x, [8, 16, 8], dim=1)
        x = torch.cat([self.conv_a(a), self.conv_b(b), c], dim=1)
        x = x * torch.sigmoid(self.spatial_gate(x))
        return self.fc(x.mean((2, 3)))


# --- the zoo ----------------------------------------------------------------------------


def _img(*shape: int) -> Callable[[], Inputs]:
    return lambda: torch.randn(2, *shape)


def _ids(vocab: int, length: int) -> Callable[[], Inputs]:
    return lambda: torch.randint(1, vocab, (2, length))


def _padded_ids() -> Tensor:
    ids = torch.randint(1, 100, (2, 12))
    ids[1, 9:] = 0  # second sequence padded
    return ids


def _e(name: str, factory: Callable[[], nn.Module], inputs: Callable[[], Inputs], onnx: bool,
       notes: str) -> ZooEntry:
    return ZooEntry(name, _seeded_build(factory), _seeded_inputs(inputs), onnx, notes)


ZOO: list[ZooEntry] = [
    _e("lenet5", lenet5, _img(1, 32, 32), True,
       "conv→conv chain; conv channels × 5×5 spatial flatten into fc1 inputs"),
    _e("vgg_bn", VGGSmall, _img(3, 32, 32), True,
       "conv-BN-ReLU chains, BN follows conv out-channels; flatten of 64×4×4 into Linear"),
    _e("resnet_basic", lambda: ResNet(BasicBlock, (2, 1, 1), (16, 32, 64)), _img(3, 32, 32), True,
       "identity residual adds tie stem and block outputs; strided 1×1 projection shortcuts"),
    _e("resnet_bottleneck", lambda: ResNet(Bottleneck, (2, 1, 1), (8, 16, 32)),
       _img(3, 32, 32), True,
       "1×1-3×3-1×1 bottleneck (×4 expansion); projection shortcut even at stride 1"),
    _e("resnext", lambda: ResNet(Bottleneck, (1, 1, 1), (16, 32, 64), groups=8, base_width=8),
       _img(3, 32, 32), True,
       "groups=8 3×3 conv: in/out channels pruned per group, uniformly across groups"),
    _e("mobilenet_v2", MobileNetV2, _img(3, 32, 32), True,
       "depthwise conv ties in=out; expand 1×1 → dw → linear 1×1; residual add when s=1"),
    _e("mobilenet_v3", MobileNetV3Small, _img(3, 32, 32), True,
       "SE: pool→1×1→ReLU→1×1→hardsigmoid, channel-wise multiply; hardswish; dw 5×5; residual"),
    _e("densenet", DenseNet, _img(3, 32, 32), True,
       "torch.cat of all earlier maps: BN/conv inputs span many producers; transition 1×1+avgpool"),
    _e("inception", InceptionNet, _img(3, 32, 32), True,
       "4-branch concat (1×1, 1×1→3×3, 1×1→5×5, maxpool→1×1): consumers see offset slices"),
    _e("shufflenet_v2", ShuffleNetV2, _img(3, 32, 32), True,
       "chunk split, identity half concat, channel shuffle view/transpose/reshape permutes idx"),
    _e("unet", UNet, _img(3, 32, 32), True,
       "ConvTranspose2d (weight is in×out) upsampling; skip concat with encoder maps"),
    _e("fpn_tuple", FPN, _img(3, 32, 32), True,
       "returns tuple of 3 maps; top-down upsample+add ties all lateral and output convs"),
    _e("fcos_dict", FCOSLike, _img(3, 32, 32), True,
       "returns dict; GroupNorm tower shared across levels; flatten+cat over levels"),
    _e("vit", ViT, _img(3, 32, 32), True,
       "patch conv, cls-token Parameter cat, pos-embed Parameter add, nn.MultiheadAttention"),
    _e("swin", SwinTiny, _img(3, 32, 32), True,
       "window partition view/permute, fused qkv split to heads, rel-pos bias table per head, "
       "roll shift with mask, patch merging 4-way cat → LayerNorm(4C) → Linear"),
    _e("convnext", ConvNeXt, _img(3, 32, 32), True,
       "dw 7×7, permute to NHWC, LayerNorm, 4× Linear MLP, gamma layer-scale, permute, residual"),
    _e("mlp_mixer", MLPMixer, _img(3, 32, 32), True,
       "token-mixing Linear acts on the token axis after transpose; channel MLP with residual"),
    _e("lstm_classifier", LSTMClassifier, _ids(100, 12), False,
       "Embedding→2-layer LSTM: 4 gate blocks per hidden unit, layer-2 input = layer-1 hidden"),
    _e("gru_bidirectional", BiGRUClassifier, _ids(100, 12), False,
       "bidirectional 2-layer GRU: 3 gate blocks, layer 2 reads fwd‖bwd; h_n cat into Linear"),
    _e("transformer_encoder", TransformerEncoderClassifier, _padded_ids, False,
       "nn.TransformerEncoder (batch_first, 2 layers) with padding mask; packed in_proj"),
    _e("gpt", GPT, _ids(128, 16), False,
       "fused c_attn split by embed_dim, heads via view/transpose, SDPA causal; wte+wpe; LM head"),
    _e("llama", Llama, _ids(128, 16), False,
       "RMSNorm weight, SwiGLU gate×up→down, GQA 4 q / 2 kv heads via repeat_interleave, "
       "rotary pairs dims i and i+head_dim/2"),
    _e("tied_lm", lambda: GPT(vocab=96, dim=48, heads=4, tie=True, use_sdpa=False),
       _ids(96, 16), False,
       "lm_head.weight is wte.weight; explicit masked softmax(QKᵀ)V attention"),
    _e("dict_text_image", TextImageModel,
       lambda: {"input_ids": torch.randint(1, 100, (2, 10)),
                "pixel_values": torch.randn(2, 3, 16, 16)},
       False, "forward(input_ids=None, pixel_values=None) → dict; text+image features added"),
    _e("frozen_backbone", FrozenBackboneNet, _img(3, 32, 32), True,
       "backbone requires_grad=False; prior conv under torch.no_grad() added to adapter branch"),
    _e("audio_m5", M5, _img(1, 4000), True,
       "Conv1d k=80 stride 4 on raw waveform, BatchNorm1d, MaxPool1d, AdaptiveAvgPool1d"),
    _e("audio_spectrogram", SpectrogramNet, _img(40, 101), True,
       "mel bins as Conv1d channels; depthwise-separable dilated Conv1d; projected residual"),
    _e("conv3d_video", Conv3DNet, _img(3, 8, 32, 32), True,
       "Conv3d/BatchNorm3d stem, 3-D residual add, MaxPool3d, AdaptiveAvgPool3d"),
    _e("two_input_film", ImageMetaNet, lambda: (torch.randn(2, 3, 32, 32), torch.randn(2, 8)),
       True, "forward(image, meta): Linear rows chunk into FiLM scale/shift of conv channels; cat"),
    _e("control_flow", ControlFlowNet, _img(3, 24, 24), True,
       "if on input shape (resize); ModuleList loop with i%2 residual; one block applied twice"),
    _e("split_glu", SplitGLUNet, _img(3, 32, 32), True,
       "F.glu ties channel c and c+32; uneven torch.split with pass-through part; PReLU(C); "
       "grouped conv on a split; 1-channel spatial gate broadcast"),
    _e("yolo_detect", YOLOLike, _img(3, 64, 64), True,
       "YOLOv8-style: C2f split+cat, SPPF pool cat, upsample/cat neck, decoupled head; eval "
       "decode: level flatten+cat, arange anchors from map shapes, DFL softmax+fixed conv"),
]

BY_NAME: dict[str, ZooEntry] = {entry.name: entry for entry in ZOO}
