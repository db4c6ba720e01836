"""Structured pruning of a model on a CUDA device (skipped without one).

Labels, scores and plans live on the CPU; the model's tensors stay on its device. Every zoo
model is pruned on CUDA and its plan replayed on the CPU copy: the same cut must give the
same outputs (up to kernel rounding, TF32 included), so the device changes where tensors
are, not which channels go.
"""

from __future__ import annotations

import pytest
import torch
from tests.structured.zoo import ZOO, ZooEntry, output_tensors

from prunekit._inputs import move_inputs, run_model
from prunekit.structured.plan import replay_plan
from prunekit.structured.pruning import prune

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("importance", ["l2", "fpgm", "random"])
@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_zoo_model_prunes_on_cuda(entry: ZooEntry, importance: str) -> None:
    cuda = torch.device("cuda")
    x = entry.example_inputs()
    model = entry.build().eval().to(cuda)
    result = prune(model, move_inputs(x, cuda), ratio=0.5, importance=importance)
    assert all(t.device.type == "cuda" for t in result.model.state_dict().values())
    cpu = entry.build().eval()
    params_before = sum(p.numel() for p in cpu.parameters())
    replay_plan(cpu, result.plan)
    assert sum(p.numel() for p in cpu.parameters()) < params_before
    with torch.no_grad():
        on_gpu = output_tensors(run_model(result.model, move_inputs(x, cuda)))
        on_cpu = output_tensors(run_model(cpu, x))
    for got, want in zip(on_gpu, on_cpu, strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-2, atol=1e-2)  # TF32 convs
