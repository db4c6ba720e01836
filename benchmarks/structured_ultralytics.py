"""Structured pruning of Ultralytics detectors (YOLOv3 to YOLO26, RT-DETR): prunekit vs
Torch-Pruning, side by side.

Each model is built from the YAML shipped inside the ``ultralytics`` package (randomly
initialised: nothing is downloaded), in eval mode, on one 1x3x320x320 input, and pruned at
ratio 0.5 with L2 filter norms by each tool on its own fresh copy, both told to leave the
output layers alone (``output_layers`` of ``benchmarks/structured.py``: the head convs whose
outputs the model returns). Statuses, columns and the summary are those of
``benchmarks/structured_timm.py`` (``ok``: the pruned model runs and every output keeps its
shape). The eval-mode forward decodes boxes (anchors from the feature-map shapes, DFL,
concat of the levels), so the whole post-head graph is traced and validated, not only the
backbone.

Command (ultralytics, torchvision and torch-pruning are benchmark-only dependencies):

    (in the venv of benchmarks/_vision_models.py, whose docstring says how to make it)
    .venv-vision/bin/pip install -c constraints.txt ultralytics
    .venv-vision/bin/python benchmarks/structured_ultralytics.py [--models yolov8n,rtdetr-l]
                                                        [--timeout 120] [--size 320]
                                                        [--no-strict] [--skip-tp]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vision_models import import_vision
from structured_timm import add_tool_options, sweep

MODELS = (
    "yolov3-tinyu", "yolov5nu", "yolov6n", "yolov8n", "yolov8n-seg", "yolov8n-pose",
    "yolov8n-obb", "yolov8n-cls", "yolov8n-p2", "yolov9t", "yolov10n", "yolo11n", "yolo11n-seg",
    "yolo12n", "yolo26n", "rtdetr-l", "rtdetr-resnet50",
)


def build(name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    """The randomly initialised model for ``<name>.yaml`` in eval mode, and its input."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.nn import tasks

    kind = next((cls for key, cls in (("rtdetr", tasks.RTDETRDetectionModel),
                                      ("-cls", tasks.ClassificationModel),
                                      ("-seg", tasks.SegmentationModel),
                                      ("-pose", tasks.PoseModel), ("-obb", tasks.OBBModel))
                 if key in name), tasks.DetectionModel)
    torch.manual_seed(0)
    model = kind(f"{name}.yaml", verbose=False).eval()
    return model, torch.randn(1, 3, size, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated YAML names (no .yaml)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per prune attempt")
    parser.add_argument("--size", type=int, default=320, help="input side (a multiple of 32)")
    add_tool_options(parser)
    args = parser.parse_args()
    import_vision()  # (ultralytics imports torchvision)
    names = [n for n in args.models.split(",") if n] or list(MODELS)
    sweep(names, functools.partial(build, size=args.size), args, width=18)


if __name__ == "__main__":
    main()
