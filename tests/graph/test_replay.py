"""Sizes and branches that depend on values: the forward check puts back what the trace saw.

Without it, a detector whose box count falls after pruning (84 boxes above the threshold
before, 44 after) failed the check with "pruning changed the model's output shapes".
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import prunekit as pk
from prunekit.graph.replay import Record, Recording, Replay, is_data_call
from prunekit.structured.depth import prune_depth
from prunekit.structured.pruning import _check_shapes
from prunekit.structured.repair import CheckFailed


class ThresholdDetector(nn.Module):
    """Scores and boxes per location; keeps the boxes that score above a threshold."""

    def __init__(self, blocks: int = 0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                                  *[Residual() for _ in range(blocks)],
                                  nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.cls = nn.Conv2d(32, 1, 1)
        self.box = nn.Conv2d(32, 4, 1)
        self.threshold = 0.5

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = self.body(x)
        scores = self.cls(f).flatten(1).sigmoid()[0]
        boxes = self.box(f).flatten(2)[0].t()
        keep = scores > self.threshold
        return {"boxes": boxes[keep], "scores": scores[keep]}


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x).relu()


def _count(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return int(model(x)["scores"].shape[0])


def test_a_box_count_that_pruning_changes_passes_the_check() -> None:
    torch.manual_seed(0)
    model, x = ThresholdDetector().eval(), torch.randn(1, 3, 16, 16)
    before = _count(model, x)
    result = pk.prune(model, x, ratio=0.5)
    after = _count(result.model, x)
    assert 0 < after != before  # the check could not have compared counts
    with torch.no_grad():
        assert result.model(x)["boxes"].shape == (after, 4)
    assert result.after.total_params < result.before.total_params
    assert _count(model, x) == before  # the user's model is untouched


def test_a_branch_on_a_value_is_put_back_in_the_check() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 1))
            self.reference = 0.0

        def forward(self, x: Tensor) -> Tensor:
            f = self.body(x).relu()
            if abs(f.sum().item() - self.reference) < 1e-4:  # the original's value alone
                return f.mean((2, 3))
            return f.flatten(1)

    torch.manual_seed(0)
    model, x = Branchy().eval(), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        model.reference = float(model.body(x).relu().sum())
    result = pk.prune(model, x, ratio=0.5)
    with torch.no_grad():
        assert result.model(x).shape == (1, 8 * 6 * 6)  # its own branch when run
        assert model(x).shape == (1, 8)


def test_a_shape_the_surgery_changes_still_fails_the_check() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    model = ThresholdDetector().eval()
    with Record(model) as recorded, torch.no_grad():
        out = model(x)
    reference = [(f"output[{k!r}]", tuple(v.shape)) for k, v in sorted(out.items())]
    wider = ThresholdDetector().eval()
    wider.box = nn.Conv2d(32, 5, 1)  # boxes (N, 5): not a count, a width
    # boxes 5 wide: a shape no value explains (their mask is not put back either, since the
    # tensor it indexes changed shape)
    with pytest.raises(CheckFailed, match=r"to \[\(\"output\['boxes'\]\", \(\d+, 5\)\)"):
        _check_shapes(wider, x, reference, replay=recorded.recording)


def test_depth_pruning_puts_back_the_count_too() -> None:
    torch.manual_seed(0)
    model, x = ThresholdDetector(blocks=4).eval(), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        model.threshold = float(model.cls(model.body(x)).sigmoid().median())
    before = _count(model, x)
    result = prune_depth(model, x, remove=2)
    assert len(result.removed) == 2
    assert _count(result.model, x) != before


def _select_all(x: Tensor, counts: Tensor) -> list[tuple[int, ...]]:
    """Every kind of call the recording puts back, on values from ``x``."""
    mask = x > 0
    picked = x[mask]
    where = torch.where(mask)[0]
    nz = mask.nonzero()
    uniq = torch.unique((x * 3).round())
    sel = torch.masked_select(x, mask)
    rep = torch.repeat_interleave(x, counts)
    n = int((x > 0).sum())
    listed = torch.arange(n).tolist()
    y = x.clone()
    y[mask] = picked * 2
    return [tuple(t.shape) for t in (picked, where, nz, uniq, sel, rep, y)] + [(len(listed),)]


def test_every_recorded_call_is_put_back_on_other_values() -> None:
    torch.manual_seed(0)
    holder = nn.Identity()
    first, counts = torch.randn(20), torch.randint(0, 3, (20,))
    with Record(holder) as recorded:
        reference = _select_all(first, counts)
    assert len(recorded.recording) == 9
    other = torch.randn(20) + 0.7  # more positives, other counts
    assert _select_all(other, counts + 1) != reference
    with Replay(recorded.recording, holder):
        assert _select_all(other, counts + 1) == reference


def test_calls_whose_arguments_changed_shape_are_not_put_back() -> None:
    holder = nn.Identity()
    with Record(holder) as recorded:
        _select_all(torch.randn(20), torch.ones(20, dtype=torch.long))
    longer = torch.ones(30)
    with Replay(recorded.recording, holder):
        got = _select_all(longer, torch.ones(30, dtype=torch.long))
    assert got[0] == (30,)  # all 30 positive, computed, not the recorded count


def test_what_counts_as_a_data_call() -> None:
    x = torch.randn(4)
    assert is_data_call(Tensor.item, (x,))
    assert is_data_call(Tensor.__getitem__, (x, x > 0))
    assert is_data_call(Tensor.__getitem__, (torch.randn(2, 4), (slice(None), x > 0)))
    assert not is_data_call(Tensor.__getitem__, (x, slice(1, 3)))
    assert not is_data_call(Tensor.__getitem__, (x, torch.tensor([0, 2])))
    assert is_data_call(torch.where, (x > 0,))
    assert not is_data_call(torch.where, (x > 0, x, -x))
    assert not is_data_call(torch.add, (x, x))

    def nms(boxes: Tensor) -> Tensor:  # torchvision's op, by its name
        return boxes
    assert is_data_call(nms, (x,))
    assert is_data_call(torch.ops.prunekit_test.nms.default, (x, x, 0.5))  # an overload
    for func in (torch.nonzero, torch.argwhere, torch.unique, torch.unique_consecutive,
                 torch.bincount):  # every op ops_reduce.BY_VALUE maps is recorded
        assert is_data_call(func, (x,))


@torch.library.custom_op("prunekit_test::nms", mutates_args=())
def _nms(boxes: Tensor, scores: Tensor, iou: float) -> Tensor:
    """Greedy NMS as a custom op (torchvision's is ``torchvision::nms``)."""
    order = scores.argsort(descending=True)
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2].abs(), y1 + boxes[:, 3].abs()
    area = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    alive = torch.ones(len(order), dtype=torch.bool)
    for rank, i in enumerate(order.tolist()):
        if not alive[rank]:
            continue
        keep.append(i)
        rest = order[rank + 1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        alive[rank + 1:] &= inter / (area[i] + area[rest] - inter) <= iou
    return torch.tensor(keep, dtype=torch.long)


class NmsDetector(ThresholdDetector):
    """RetinaNet's post-processing: threshold, top-k of what is left, NMS."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = self.body(x)
        scores = self.cls(f).flatten(1).sigmoid()[0]
        boxes = self.box(f).flatten(2)[0].t()
        idx = torch.where(scores > self.threshold)[0]
        top = scores[idx].topk(min(40, idx.size(0))).indices
        idx = idx[top]
        keep = torch.ops.prunekit_test.nms(boxes[idx], scores[idx], 0.3)
        return {"boxes": boxes[idx][keep], "scores": scores[idx][keep]}


def test_threshold_topk_and_nms_of_a_detector() -> None:
    torch.manual_seed(0)
    model, x = NmsDetector().eval(), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        model.threshold = float(model.cls(model.body(x)).sigmoid().quantile(0.7))
    before = _count(model, x)
    result = pk.prune(model, x, ratio=0.5)
    assert _count(result.model, x) != before
    assert result.after.total_params < result.before.total_params


def test_positions_of_channels_picked_by_value_keep_those_channels_whole() -> None:
    class LiveChannels(nn.Module):
        """Keeps the channels that are non-zero somewhere: their positions name channels."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            f = self.conv(x).relu()
            live = f.abs().sum((0, 2, 3)).nonzero().squeeze(1)
            return self.head(f.index_fill(1, live, 0.0) + f)

    torch.manual_seed(0)
    model, x = LiveChannels().eval(), torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="prune removed nothing"):
        result = pk.prune(model, x, ratio=0.5)
    assert result.model.conv.out_channels == 8
    assert "nonzero picks positions or values of channels by their values" in \
        result.coverage.fixed["conv.weight"]


def test_one_argument_where_gives_positions_and_three_arguments_stay_elementwise() -> None:
    class Wheres(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            f = self.head(torch.where(x.mean(1, keepdim=True) > 0, self.conv(x)[..., :1, :1]
                                      .expand(-1, -1, 8, 8), 0.0)[..., 1:7, 1:7]
                          + self.conv(x))
            rows = torch.where(f.mean((0, 1, 3)) > 0)[0]
            return f[:, :, rows]

    torch.manual_seed(0)
    model, x = Wheres().eval(), torch.randn(1, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.conv.out_channels == 4
    with torch.no_grad():
        assert result.model(x).shape[:2] == (1, 4)


def test_a_result_that_cannot_be_copied_is_not_recorded() -> None:
    class NoCopy:
        def __deepcopy__(self, memo: dict) -> NoCopy:
            raise TypeError("not copyable")

    def nms(boxes: Tensor) -> NoCopy:
        return NoCopy()

    recording = Recording(nn.Identity())
    recording.record(nms, (torch.randn(3, 4),), {}, NoCopy(), None)
    assert len(recording) == 0
    recording.record(nms, (torch.randn(3, 4),), {}, torch.tensor([0, 2]), None)
    assert len(recording) == 1


def _width(t: Tensor) -> int:
    """Called in a loop: the call site of ``float`` warms up as the loop runs."""
    return int(float(t))


class WidthsInALoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        h = self.conv(x).mean((2, 3))
        widths = (_width(torch.tensor(i % 5 + 1)) for i in range(24))
        return (self.head(h), *(x.new_zeros(1, w) for w in widths))


def test_a_call_site_is_the_same_in_the_trace_and_in_the_warm_check() -> None:
    # Python 3.11 makes the call at a warm site in another instruction (PRECALL, not CALL):
    # keyed by byte, the trace's first, cold runs of the loop and the check's warm ones were
    # other sites, the values came back out of order and a copy with nothing cut failed
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    result = pk.prune(WidthsInALoop().eval(), x, ratio=0.5)
    assert result.model.conv.out_channels == 4
    with torch.no_grad():
        assert [o.shape[1] for o in result.model(x)[1:]] == [i % 5 + 1 for i in range(24)]


class PastedBox(nn.Module):
    """A box from the model's values, pasted into a fixed canvas as torchvision's
    ``paste_mask_in_image`` does: the piece sized by ``int(stop - start)``, its place by
    the tensors ``start`` and ``stop``. With ``extra``, the canvas then meets a wider one."""

    def __init__(self, extra: int = 0) -> None:
        super().__init__()
        self.extra = extra
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.box = nn.Conv2d(8, 2, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.conv(x)
        b = self.box(f).mean((2, 3))[0].abs() * 40
        start = b[0].to(torch.int64) % 8
        stop = start + b[1].to(torch.int64) % 8 + 1
        canvas = torch.zeros(16)
        canvas[start:stop] = torch.ones(int(stop - start))
        return self.head(f.mean((2, 3))), canvas + torch.zeros(16 + self.extra)


@pytest.mark.parametrize("seed", range(4))
def test_a_function_given_back_a_size_its_own_tensors_no_longer_agree_with(seed: int) -> None:
    # the size put back from the trace, the slice from the pruned model's own box: failed
    # the check for no fault of the surgery (Mask R-CNN); that function now runs on its own
    torch.manual_seed(seed)
    x = torch.randn(1, 3, 8, 8)
    result = pk.prune(PastedBox().eval(), x, ratio=0.5)
    assert result.model.conv.out_channels == 4
    with torch.no_grad():
        assert result.model(x)[1].shape == (16,)


def test_a_function_that_fails_on_its_own_values_too_still_fails_the_check() -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 3, 8, 8)
    model = PastedBox().eval()
    with Record(model) as recorded, torch.no_grad():
        reference = [(f"output[{i}]", tuple(t.shape)) for i, t in enumerate(model(x))]
    other = PastedBox(extra=1).eval()  # other values, and a fault no value explains
    with pytest.raises(CheckFailed, match=r"\(16\) must match the size of tensor b \(17\)"):
        _check_shapes(other, x, reference, replay=recorded.recording)
