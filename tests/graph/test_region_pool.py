"""Region pooling (torchvision's compiled ``roi_align`` / ``roi_pool``, which Faster, Mask
and Keypoint R-CNN's ``MultiScaleRoIAlign`` call): each region's output keeps the feature
map's channels at their index. Before, the op had no handler and the R-CNNs were refused.
torchvision is not a dependency, so an op of the same name stands in for it here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tests.graph.test_unfold import _zero_removed_outputs
from torch import Tensor, nn

import prunekit as pk


@torch.library.custom_op("prunekit_test::roi_align", mutates_args=())
def roi_align(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
              pooled_width: int, sampling_ratio: int, aligned: bool) -> Tensor:
    """Each box ``[image, x0, y0, x1, y1]`` cropped from its image and average-pooled."""
    crops = []
    for box in rois.tolist():
        image, x0, y0, x1, y1 = int(box[0]), *(int(v * spatial_scale) for v in box[1:])
        crop = input[image, :, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
        crops.append(F.adaptive_avg_pool2d(crop, (pooled_height, pooled_width)))
    return torch.stack(crops)


@roi_align.register_fake
def _(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
      pooled_width: int, sampling_ratio: int, aligned: bool) -> Tensor:
    return input.new_empty(rois.shape[0], input.shape[1], pooled_height, pooled_width)


class BoxHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16 * 2 * 2, 32)
        self.cls = nn.Linear(32, 5)

    def forward(self, images: Tensor, boxes: Tensor) -> Tensor:
        pooled = torch.ops.prunekit_test.roi_align(self.backbone(images), boxes, 1.0, 2, 2, 0,
                                                   False)
        return self.cls(torch.relu(self.fc(pooled.flatten(1))))


def test_region_pooling_keeps_the_channels_at_their_index() -> None:
    torch.manual_seed(0)
    model = BoxHead().eval()
    images = torch.randn(2, 3, 12, 12)
    boxes = torch.tensor([[0, 1.0, 1, 8, 8], [1, 2, 3, 11, 10], [0, 4, 0, 12, 6]])
    result = pk.prune(model, (images, boxes), ratio=0.5)
    pruned = result.model
    assert pruned.backbone[2].out_channels == 8 and pruned.fc.in_features == 8 * 2 * 2
    zeroed = _zero_removed_outputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(pruned(images, boxes), zeroed(images, boxes))
        other = torch.tensor([[1, 0.0, 0, 6, 6]])
        torch.testing.assert_close(pruned(images, other), zeroed(images, other))
