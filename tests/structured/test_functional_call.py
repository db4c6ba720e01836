"""``torch.func.functional_call`` with a computed weight (W + delta: a weight offset, a
hypernetwork's output): the layer runs on a tensor that is not its parameter, so its forward
is traced op by op (``F.linear(x, W + delta)``), and the cut follows that tensor to both
parameters. Before, the layer was handled as if it ran on its own weight: delta kept its 32
rows, the check failed, and the coverage said delta was "not read by the forward pass"."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn
from torch.func import functional_call

import prunekit as pk


class WeightOffset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.target = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
        self.delta = nn.Parameter(torch.randn(32, 12) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        params = dict(self.target.named_parameters())
        params["0.weight"] = params["0.weight"] + self.delta
        return functional_call(self.target, params, (x,))


def test_a_layer_run_on_a_computed_weight_cuts_both_parameters(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, x = WeightOffset().eval(), torch.randn(4, 12)
    result = pk.prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.delta.shape == (16, 12) and pruned.target[0].weight.shape == (16, 12)
    assert pruned.target[0].out_features == 16 and pruned.target[2].in_features == 16
    keep = result.plan["params"]["delta"]["keep"]["0"]
    reference = copy.deepcopy(model)  # the removed hidden units unread
    with torch.no_grad():
        reference.target[2].weight[:, sorted(set(range(32)) - set(keep))] = 0
        for other in (x, torch.randn(7, 12)):
            torch.testing.assert_close(pruned(other), reference(other))
        loaded = pk.load(pk.save(result, tmp_path / "ckpt"), WeightOffset())
        assert torch.equal(loaded(x), pruned(x))


def test_a_layer_run_on_its_own_parameters_by_functional_call_prunes_as_a_layer() -> None:
    torch.manual_seed(0)

    class Own(WeightOffset):
        def forward(self, x: Tensor) -> Tensor:
            return functional_call(self.target, dict(self.target.named_parameters()), (x,))

    model = Own().eval()
    del model.delta  # (unread here)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pk.prune(model, torch.randn(4, 12), ratio=0.5)
    assert "target.0" in result.plan["modules"] and result.model.target[0].out_features == 16
