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
