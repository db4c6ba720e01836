"""Structured pruning of models from three more libraries: prunekit vs Torch-Pruning, side
by side.

* ``ultralytics``: YOLOv3-tiny to YOLO26 and RT-DETR, built from the YAMLs inside the
  package, on one 1x3x320x320 input. The eval-mode forward decodes boxes (anchors from the
  feature-map shapes, DFL, concat of the levels), so the whole post-head graph is traced and
  validated, not only the backbone.
* ``smp`` (segmentation_models_pytorch): every decoder on a ResNet-18 encoder, and U-Net on
  four more encoders (EfficientNet, MobileNetV2, MiT, a timm ConvNeXt), on 1x3x64x64 (256 for
  the decoders that need it).
* ``diffusers``: a pixel U-Net with attention, a text-conditioned U-Net (cross-attention,
  time embedding), a VAE and a DiT, tiny configs, with their keyword inputs.
* ``torchvision``: its models that are not classifiers (``benchmarks/structured_torchvision.py``
  has those): semantic segmentation (FCN, DeepLabV3, LR-ASPP) on 1x3x128x128, detection
  (RetinaNet, FCOS, Faster / Mask / Keypoint R-CNN, SSD, SSDlite) on one 3x256x256 image in a
  list, with the post-processing (score threshold, top-k, NMS) in the traced and checked
  forward, video (R3D, MC3, R(2+1)D, S3D, MViT, Video Swin) on clips, and RAFT optical flow on
  a pair of 1x3x128x128 frames. The detectors other than RetinaNet and FCOS need
  torchvision's C++ ops (NMS, RoIAlign); where those do not load (a torchvision build whose
  ops do not match the installed torch) they are listed as skipped.

Every model is randomly initialised (nothing is downloaded), in eval mode, and pruned at
ratio 0.5 with L2 filter norms by each tool on its own fresh copy, both told to leave the
output layers alone (``output_layers`` of ``benchmarks/structured.py``). Statuses, columns
and the summary are those of ``benchmarks/structured_timm.py`` (``ok``: the pruned model
runs and every output keeps its shape).

Command (the libraries, torchvision and torch-pruning are benchmark-only dependencies):

    (in the venv of benchmarks/_vision_models.py, whose docstring says how to make it)
    .venv-vision/bin/pip install -c constraints.txt ultralytics segmentation-models-pytorch \\
        diffusers
    .venv-vision/bin/python benchmarks/structured_libraries.py \
        [--set ultralytics|smp|diffusers|torchvision|all] [--models yolov8n,smp_FPN_resnet18]
        [--timeout 120] [--no-strict] [--skip-tp]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vision_models import import_vision
from structured_timm import add_tool_options, sweep

ULTRALYTICS = (
    "yolov3-tinyu", "yolov5nu", "yolov6n", "yolov8n", "yolov8n-seg", "yolov8n-pose",
    "yolov8n-obb", "yolov8n-cls", "yolov8n-p2", "yolov9t", "yolov10n", "yolo11n", "yolo11n-seg",
    "yolo12n", "yolo26n", "rtdetr-l", "rtdetr-resnet50",
)
SMP = (
    *(f"smp_{arch}_resnet18" for arch in (
        "Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Linknet",
        "MAnet", "PAN", "UPerNet", "Segformer")),
    *(f"smp_Unet_{encoder}" for encoder in (
        "efficientnet-b0", "mobilenet_v2", "mit_b0", "tu-convnext_atto")),
)
DIFFUSERS = ("diffusers_unet2d", "diffusers_unet2d_cond", "diffusers_vae", "diffusers_dit")
TV_SEGMENTATION = ("fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large",
                   "lraspp_mobilenet_v3_large")
TV_DETECTION = ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn")
TV_DETECTION_OPS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn",
                    "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn", "ssd300_vgg16",
                    "ssdlite320_mobilenet_v3_large")  # need torchvision's C++ ops
TV_VIDEO = ("r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v1_b", "mvit_v2_s", "swin3d_t")
TV_FLOW = ("raft_small", "raft_large")
TORCHVISION = tuple(f"tv_{n}" for n in (*TV_SEGMENTATION, *TV_DETECTION, *TV_DETECTION_OPS,
                                        *TV_VIDEO, *TV_FLOW))
SETS = {"ultralytics": ULTRALYTICS, "smp": SMP, "diffusers": DIFFUSERS,
        "torchvision": TORCHVISION, "all": ULTRALYTICS + SMP + DIFFUSERS + TORCHVISION}


def build(name: str) -> tuple[nn.Module, Any]:
    """The randomly initialised model called ``name`` in eval mode, and its inputs."""
    torch.manual_seed(0)
    makers = {"smp": _smp, "diffusers": _diffusers, "tv": _torchvision}
    maker = makers.get(name.split("_", 1)[0], _ultralytics)
    model, inputs = maker(name)
    return model.eval(), inputs


def _ultralytics(name: str) -> tuple[nn.Module, Any]:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.nn import tasks

    kind = next((cls for key, cls in (("rtdetr", tasks.RTDETRDetectionModel),
                                      ("-cls", tasks.ClassificationModel),
                                      ("-seg", tasks.SegmentationModel),
                                      ("-pose", tasks.PoseModel), ("-obb", tasks.OBBModel))
                 if key in name), tasks.DetectionModel)
    return kind(f"{name}.yaml", verbose=False), torch.randn(1, 3, 320, 320)


def _smp(name: str) -> tuple[nn.Module, Any]:
    import segmentation_models_pytorch as smp

    _, arch, encoder = name.split("_", 2)
    model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError:  # PAN pools its deepest map further: it needs a larger input
        x = torch.randn(1, 3, 256, 256)
    return model, x


def _diffusers(name: str) -> tuple[nn.Module, Any]:
    import diffusers

    small = {"block_out_channels": (16, 32), "norm_num_groups": 8}
    makers: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
        "unet2d": lambda: (diffusers.UNet2DModel(
            sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), **small),
            (torch.randn(1, 3, 16, 16), torch.tensor([10]))),
        "unet2d_cond": lambda: (diffusers.UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
            attention_head_dim=8, **small),
            {"sample": torch.randn(1, 4, 16, 16), "timestep": torch.tensor([10]),
             "encoder_hidden_states": torch.randn(1, 5, 24)}),
        "vae": lambda: (diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, **small),
            torch.randn(1, 3, 16, 16)),
        "dit": lambda: (diffusers.DiTTransformer2DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
            num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10),
            {"hidden_states": torch.randn(1, 4, 8, 8), "timestep": torch.tensor([3]),
             "class_labels": torch.tensor([1])}),
    }
    return makers[name.removeprefix("diffusers_")]()


def _torchvision(name: str) -> tuple[nn.Module, Any]:
    from torchvision import models

    name = name.removeprefix("tv_")
    if name in TV_SEGMENTATION:
        return (models.get_model(name, weights=None, weights_backbone=None, num_classes=5,
                                 aux_loss=False), torch.randn(1, 3, 128, 128))
    if name in TV_DETECTION + TV_DETECTION_OPS:
        return (models.get_model(name, weights=None, weights_backbone=None, num_classes=5),
                ([torch.rand(3, 256, 256)],))
    if name in TV_FLOW:
        return models.get_model(name), (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128))
    frames, side = (16, 224) if name.startswith(("mvit", "s3d")) else (8, 112)
    return models.get_model(name), torch.randn(1, 3, frames, side, side)


def _runnable(names: list[str]) -> list[str]:
    """``names`` less the detectors that need torchvision's C++ ops where those do not load
    (said on stdout)."""
    from torchvision import extension

    if extension._has_ops():
        return names
    left = [n for n in names if n.removeprefix("tv_") not in TV_DETECTION_OPS]
    if len(left) < len(names):
        print(f"skipped (torchvision's C++ ops do not load here): "
              f"{', '.join(n for n in names if n not in left)}")
    return left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), default="all", help="which library")
    parser.add_argument("--models", default="", help="comma-separated names (default: --set)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per prune attempt")
    add_tool_options(parser)
    args = parser.parse_args()
    import_vision()  # (ultralytics and smp import torchvision)
    names = [n for n in args.models.split(",") if n] or list(SETS[args.set])
    sweep(_runnable(names), build, args, width=36)


if __name__ == "__main__":
    main()
