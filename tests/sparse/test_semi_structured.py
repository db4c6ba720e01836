"""2:4 semi-structured: the layout check on CPU; the conversion itself on a CUDA GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.sparse.semi_structured import (
    SemiStructuredError,
    semi_structured_violations,
    to_semi_structured,
)
from prunekit.sparse.sparsify import sparsify


def _mlp_24() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(),
                          nn.Linear(64, 10)).eval()
    sparsify(model, pattern="2:4")
    return model


def test_a_2_4_mask_satisfies_the_layout() -> None:
    model = _mlp_24()
    assert semi_structured_violations(model[0].weight) == []
    assert semi_structured_violations(model[2].weight, torch.bfloat16) == []
    assert semi_structured_violations(model[0].weight, torch.float32) == []
    # 10 x 64 is 2:4 sparse but too small for the CUTLASS tiles
    (problem,) = semi_structured_violations(model[4].weight)
    assert "multiple of (and at least) (32, 64)" in problem


def test_unstructured_and_odd_weights_are_refused() -> None:
    torch.manual_seed(0)
    dense = torch.randn(64, 128)
    (problem,) = semi_structured_violations(dense)
    assert "2048 of 2048 groups" in problem and "pattern='2:4'" in problem
    three = torch.zeros(64, 128)
    three[0, :3] = 1.0
    assert "1 of 2048 groups" in semi_structured_violations(three)[0]
    assert "2-D" in semi_structured_violations(torch.zeros(4, 4, 3, 3))[0]
    assert any("not a multiple of 4" in p for p in semi_structured_violations(torch.zeros(32, 66)))
    with pytest.raises(ConfigError, match=r"dtype=torch\.float64"):
        semi_structured_violations(dense, torch.float64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cpu_gets_a_clear_error() -> None:
    model = _mlp_24()
    with pytest.raises(SemiStructuredError, match=r"needs a CUDA GPU.*convert"):
        to_semi_structured(model)
    assert isinstance(model[0].weight, torch.Tensor) and model[0].weight.layout == torch.strided


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_conversion_matches_dense(dtype: torch.dtype) -> None:
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 kernels need compute capability 8.0+")
    model = _mlp_24().cuda()
    x = torch.randn(64, 128, device="cuda", dtype=dtype)
    with torch.no_grad():
        want = model.to(dtype)(x)
    result = to_semi_structured(model, dtype=dtype)
    assert result.converted == ("0", "2")
    assert "4" in result.skipped
    assert type(result.model[0].weight).__name__.startswith("SparseSemiStructuredTensor")
    with torch.no_grad():
        got = result.model(x)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
