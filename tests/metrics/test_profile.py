"""profile(): exact counts on LeNet-5 against hand arithmetic, masks, tied weights, inputs."""

from __future__ import annotations

import json

import pytest
import torch
from rich.table import Table
from torch import nn

from prunekit.metrics.compare import compare
from prunekit.metrics.profile import Profile, profile
from prunekit.sparse.compressed import bitmap_nbytes
from prunekit.sparse.masks import apply_mask
from prunekit.zoo import LeNet5

# MACs by hand for one 1×32×32 image (output elements × MACs per output element):
#   conv1 6·28·28 × (1·5·5)  = 117,600    conv2 16·10·10 × (6·5·5) = 240,000
#   fc1 120 × 400 = 48,000   fc2 84 × 120 = 10,080   fc3 10 × 84 = 840
# FlopCounterMode counts the multiply-accumulates only: no bias adds, ReLU or pooling.
LENET_MACS = {"conv1": 117_600, "conv2": 240_000, "fc1": 48_000, "fc2": 10_080, "fc3": 840}


def test_lenet_matches_hand_arithmetic(lenet: LeNet5) -> None:
    prof = profile(lenet, torch.randn(1, 1, 32, 32))
    assert prof.total_params == prof.trainable_params == prof.nonzero_params == 61_706
    assert prof.macs == prof.sparse_macs == sum(LENET_MACS.values()) == 416_520
    by_name = {layer.name: layer for layer in prof.layers}
    assert {n: by_name[n].macs for n in LENET_MACS} == LENET_MACS
    # pooling and activations appear as layers but cost no MACs in FlopCounterMode
    assert by_name["pool"].macs == by_name["act"].macs == 0
    assert by_name["act"].calls == 4
    assert by_name["conv1"].output_shape == (1, 6, 28, 28)
    assert by_name["fc3"].output_shape == (1, 10)
    assert by_name["fc1"].params == 48_120
    assert prof.bytes_fp32 == prof.bytes_sparse_fp32 == 4 * 61_706
    assert prof.bytes_fp16 == prof.bytes_sparse_fp16 == 2 * 61_706
    assert prof.sparsity == 0.0


def test_macs_scale_with_batch(lenet: LeNet5, lenet_input: torch.Tensor) -> None:
    assert profile(lenet, lenet_input).macs == 2 * 416_520


def test_masks_reduce_nonzeros_compressed_bytes_and_sparse_macs(lenet: LeNet5) -> None:
    gen = torch.Generator().manual_seed(0)
    fc1_mask = torch.rand(120, 400, generator=gen) < 0.1
    conv2_mask = torch.rand(16, 6, 5, 5, generator=gen) < 0.5
    apply_mask(lenet.fc1, "weight", fc1_mask)
    apply_mask(lenet.conv2, "weight", conv2_mask)
    prof = profile(lenet, torch.randn(1, 1, 32, 32))

    kept_fc1, kept_conv2 = int(fc1_mask.sum()), int(conv2_mask.sum())
    removed = (48_000 - kept_fc1) + (2_400 - kept_conv2)
    assert prof.total_params == 61_706  # the parametrization's original is not double-counted
    assert prof.nonzero_params == 61_706 - removed
    dense_rest = 61_706 - 48_000 - 2_400
    assert prof.bytes_sparse_fp32 == (
        4 * dense_rest + bitmap_nbytes(48_000, kept_fc1, 4) + bitmap_nbytes(2_400, kept_conv2, 4)
    )
    assert prof.bytes_sparse_fp16 == (
        2 * dense_rest + bitmap_nbytes(48_000, kept_fc1, 2) + bitmap_nbytes(2_400, kept_conv2, 2)
    )
    assert prof.bytes_fp32 == 4 * 61_706
    by_name = {layer.name: layer for layer in prof.layers}
    assert by_name["fc1"].type == "Linear"
    assert by_name["fc1"].nonzeros == kept_fc1 + 120  # bias stays dense
    assert by_name["fc1"].sparse_macs == kept_fc1  # one MAC per kept weight for one image
    assert by_name["conv2"].sparse_macs == kept_conv2 * 10 * 10
    assert prof.macs == 416_520
    assert prof.sparse_macs == 416_520 - (48_000 - kept_fc1) - (2_400 - kept_conv2) * 100


def test_tied_and_frozen_parameters_count_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(8, 8, bias=False)
            self.decoder = nn.Linear(8, 8, bias=False)
            self.decoder.weight = self.encoder.weight
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.decoder(self.encoder(x)))

    torch.manual_seed(0)  # an exact 0.0 from an unseeded init would change nonzero_params
    model = Tied()
    model.head.requires_grad_(False)
    prof = profile(model, torch.randn(1, 8))
    assert prof.total_params == prof.nonzero_params == 64 + 18
    assert prof.trainable_params == 64
    assert prof.macs == 64 + 64 + 16


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(y)


@pytest.mark.parametrize("as_dict", [False, True])
def test_tuple_and_dict_inputs(as_dict: bool) -> None:
    x, y = torch.randn(2, 4), torch.randn(2, 5)
    prof = profile(TwoInputs(), {"x": x, "y": y} if as_dict else (x, y))
    assert prof.macs == 2 * (4 * 3 + 5 * 3)
    assert [layer.output_shape for layer in prof.layers] == [(2, 3), (2, 3)]


def test_attention_counted_even_on_the_fused_fast_path() -> None:
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = torch.randn(1, 5, 16)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    prof = profile(mha, (x, x, x))
    # q/k/v projection 5·16·48 + out projection 5·16·16 + QKᵀ and AV 2·(2 heads·5·5·8)
    assert prof.macs == 3_840 + 1_280 + 800
    assert torch.backends.mha.get_fastpath_enabled() == fastpath


def test_model_state_left_alone(lenet: LeNet5) -> None:
    lenet.train()
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    profile(lenet, torch.randn(1, 1, 32, 32))
    assert lenet.training
    assert all(not m._forward_hooks for m in lenet.modules())
    assert all(torch.equal(before[k], v) for k, v in lenet.state_dict().items())
    assert torch.is_grad_enabled()


def test_to_dict_table_and_compare(lenet: LeNet5) -> None:
    x = torch.randn(1, 1, 32, 32)
    before = profile(lenet, x)
    apply_mask(lenet.fc1, "weight", torch.zeros(120, 400, dtype=torch.bool))
    after = profile(lenet, x)

    data = json.loads(json.dumps(before.to_dict()))
    assert data["macs"] == 416_520
    assert data["layers"][0]["name"] == "conv1"
    assert data["layers"][0]["output_shape"] == [1, 6, 28, 28]

    table = before.table()
    assert isinstance(table, Table)
    assert table.row_count == len(before.layers) + 1

    diff = before.diff(after)
    assert diff == compare(before, after)
    assert diff.params_ratio == 1.0
    assert diff.macs_ratio == 1.0
    assert diff.nonzero_ratio == pytest.approx((61_706 - 48_000) / 61_706)
    assert diff.sparse_macs_ratio == pytest.approx((416_520 - 48_000) / 416_520)
    expected_size = 4 * (61_706 - 48_000) + bitmap_nbytes(48_000, 0, 4)
    assert diff.size_ratio == pytest.approx(expected_size / (4 * 61_706))
    assert json.loads(json.dumps(diff.to_dict()))["ratios"]["macs"] == 1.0
    assert diff.table().row_count == 7
    layer_table = diff.layer_table()
    assert layer_table.row_count == len(before.layers)
    rows = list(zip(*(list(column.cells) for column in layer_table.columns), strict=True))
    fc1_row = next(list(row) for row in rows if row[0] == "fc1")
    assert fc1_row == ["fc1", "48,120 → 48,120", "48,120 → 120", "48,000 → 0"]


def test_rejects_non_module() -> None:
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        profile("lenet", torch.randn(1, 1, 32, 32))  # type: ignore[arg-type]


def test_profile_is_frozen(lenet: LeNet5) -> None:
    prof = profile(lenet, torch.randn(1, 1, 32, 32))
    assert isinstance(prof, Profile)
    with pytest.raises(AttributeError):
        prof.macs = 0  # type: ignore[misc]


def test_training_mode_batchnorm_statistics_are_restored() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prof = profile(model, torch.randn(2, 3, 8, 8))
    assert prof.macs == 2 * 4 * 6 * 6 * 27
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(before[key], value), key


def test_functional_attention_is_counted_on_cpu() -> None:
    class Attend(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return nn.functional.scaled_dot_product_attention(q, k, v)

    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    prof = profile(Attend(), (q, k, v))
    assert prof.macs == prof.sparse_macs == 2 * (2 * 5 * 5 * 8)  # QKᵀ and AV, 2 heads
    assert [(layer.name, layer.macs) for layer in prof.layers] == [("", 800)]


def test_a_parameter_view_passed_to_a_submodule_is_counted() -> None:
    # under no_grad a view of a parameter (a class token expanded to the batch, as timm's
    # CaiT passes to its class-attention blocks) requires grad but has no grad_fn; torch's
    # module tracker inside FlopCounterMode asserted on it
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.randn(1, 1, 4))
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.token.expand(x.shape[0], -1, -1)) + x.sum()

    model = Tokens()
    result = profile(model, torch.randn(2, 5))
    assert result.macs == 2 * 4 * 3
    assert result.trainable_params == 4 + 15 and model.token.requires_grad


def test_bilinear_macs_are_batch_out_in1_in2() -> None:
    """FlopCounterMode has no formula for nn.Bilinear's aten._trilinear; profile adds one."""

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bilinear = nn.Bilinear(16, 12, 20)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.bilinear(x, y)

    result = profile(Pair(), (torch.randn(3, 5, 16), torch.randn(3, 5, 12)))
    assert result.macs == 3 * 5 * 20 * 16 * 12
    assert [layer.macs for layer in result.layers if layer.name == "bilinear"] == [result.macs]


@pytest.mark.parametrize("packed", [False, True])
def test_lstm_macs_are_counted(packed: bool) -> None:
    """``nn.LSTM`` runs one fused kernel per layer and direction on CPU, which torch's flop
    counter has no formula for: its MACs were counted as 0, so ``summary()`` and
    ``target={"macs": ...}`` saw only the head (found by the workflow probe)."""
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 8)
    per_step = 2 * 64 * (8 + 16) + 2 * 64 * (32 + 16)  # two directions, two layers
    if packed:
        lengths = torch.tensor([5, 4, 2])
        inputs: object = (nn.utils.rnn.pack_padded_sequence(x, lengths),)
        steps = int(lengths.sum())
    else:
        inputs, steps = x, 5 * 3
    result = profile(lstm, inputs)
    assert result.macs == steps * per_step
    assert dict((layer.name, layer.macs) for layer in result.layers)[""] == steps * per_step
