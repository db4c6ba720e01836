"""When the pruned model fails its forward check, the error lists what may size the cut
channels out of the trace's sight; a forward hook that closes over a tensor of the model
is one (the pruned copy's hook still holds the unpruned tensor)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import PruneValidationError
from prunekit.structured import prune


def test_a_hook_holding_a_model_tensor_is_named_among_the_causes() -> None:
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    gate = nn.Parameter(torch.rand(32))
    model.gate = gate  # (a parameter of the model, read by the hook below)
    model[0].register_forward_hook(lambda module, args, out: out * gate)
    with pytest.raises(PruneValidationError, match="a hook of yours that holds a tensor"):
        prune(model, torch.randn(3, 8), ratio=0.5)
    assert model[0].out_features == 32  # unchanged


class _Features(nn.Module):
    """The feature-capture idiom: a hook whose closure writes into the original model's
    ``self.features``, which the copy that prune checks does not read."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, 4, 1)
        self.features: dict[str, torch.Tensor] = {}

        def hook(module: nn.Module, args: object, out: torch.Tensor) -> None:
            self.features["c1"] = out

        self.body[1].register_forward_hook(hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.features.clear()
        self.body(x)
        return self.head(self.features["c1"])


@pytest.mark.parametrize("strict", [True, False])
def test_a_copy_that_fails_with_nothing_cut_blames_no_group(strict: bool) -> None:
    """Before, the error blamed every group, and with strict=False an internal exception
    (repair.CheckFailed) escaped (found by the detection probe)."""
    model = _Features().eval()
    with pytest.raises(PruneValidationError, match=r"so does a copy of the model with nothing "
                                                   r"cut.*forward hook or closure of yours"):
        prune(model, torch.randn(1, 3, 8, 8), ratio=0.5, strict=strict)
    assert model.body[0].out_channels == 16
