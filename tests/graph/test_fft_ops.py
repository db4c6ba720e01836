"""Fourier transforms over spatial, time or token dims keep the channels where they are
(FNO/GFNet/FFC blocks prune like any conv stack), over a channel dim they keep those
channels whole (FNet's FFT over the hidden dim); ``cosine_similarity``,
``pairwise_distance`` and ``cdist`` join their two inputs' channels index by index.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from tests.graph.test_unfold import _zero_removed_outputs
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

import prunekit as pk

Mix = Callable[[Tensor], Tensor]

# spectral mixes over the trailing (spatial) dims of [B, C, H, W]: each keeps C in place
SPATIAL: dict[str, Mix] = {
    "rfft2": lambda y: torch.fft.irfft2(torch.fft.rfft2(y, norm="ortho") * 0.5,
                                        s=y.shape[-2:], norm="ortho"),
    "fft2": lambda y: torch.fft.ifft2(torch.fft.fft2(y) * 2).real + torch.fft.fft2(y).imag,
    "fftn_abs_angle": lambda y: torch.fft.fftn(y, dim=(-2, -1)).abs()
    + torch.angle(torch.fft.fftn(y, dim=(2, 3))),
    "rfftn_s": lambda y: torch.fft.irfftn(torch.fft.rfftn(y, s=(8, 8)), s=y.shape[-2:]),
    "rfft": lambda y: torch.fft.irfft(torch.fft.rfft(y), n=y.shape[-1]),
    "fft_dim": lambda y: torch.fft.ifft(torch.fft.fft(y, dim=2).conj(), dim=2).imag,
    "hfft": lambda y: torch.fft.hfft(torch.fft.ihfft(y), n=y.shape[-1]),
    "hfft2": lambda y: torch.fft.hfft2(torch.fft.ihfft2(y), s=y.shape[-2:]),
    "shift": lambda y: torch.fft.ifftshift(torch.fft.fftshift(y, dim=(-2, -1)) * 0.5,
                                           dim=-1),
}


class _Spectral(nn.Module):
    def __init__(self, mix: Mix) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mix = mix
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.h = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.mix(F.relu(self.a(x)))
        return self.h(F.relu(self.b(y)))


def _check_equivalent(model: nn.Module, x: Tensor, result: pk.PruneResult,
                      zero: Callable[[nn.Module, dict], nn.Module] = _zero_removed_inputs
                      ) -> None:
    """Pruning equals zeroing the removed channels in the unpruned model; ratio 0 changes
    nothing; the output keeps its shape."""
    with torch.no_grad():
        out = result.model(x)
        assert out.shape == model(x).shape
        torch.testing.assert_close(out, zero(model, result.plan)(x), rtol=1e-4, atol=1e-5)
        assert torch.equal(pk.prune(model, x, ratio=0.0).model(x), model(x))


@pytest.mark.parametrize("name", list(SPATIAL))
def test_fft_over_spatial_dims_keeps_channels_in_place(name: str) -> None:
    model, x = _Spectral(SPATIAL[name]).eval(), torch.randn(2, 3, 6, 6)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=1)
    assert result.model.a.out_channels == result.model.b.in_channels == 8
    assert result.plan["modules"]["b"]["keep"]["in"] == result.plan["modules"]["a"]["keep"]["out"]
    assert len(result.coverage.prunable) == 6
    _check_equivalent(model, x, result)


class _GlobalFilter(nn.Module):
    """GFNet's global filter: an rfft2 over the token grid of ``[B, H, W, C]``, times a
    learned complex filter ``[H, W // 2 + 1, C]`` (stored as real pairs), and back."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.fc1 = nn.Linear(8, 16)
        self.w = nn.Parameter(torch.randn(4, 3, 16, 2) * 0.5)
        self.fc2 = nn.Linear(16, 8)

    def forward(self, x: Tensor) -> Tensor:
        f = torch.fft.rfft2(self.fc1(x), dim=(1, 2), norm="ortho")
        f = f * torch.view_as_complex(self.w)
        y = torch.fft.irfft2(f, s=(4, 4), dim=(1, 2), norm="ortho")
        return self.fc2(F.gelu(y))


def test_global_filter_is_cut_along_its_channel_axis() -> None:
    model, x = _GlobalFilter().eval(), torch.randn(2, 4, 4, 8)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=3)
    keep = result.plan["modules"]["fc1"]["keep"]["out"]
    assert len(keep) == 8 and result.plan["modules"]["fc2"]["keep"]["in"] == keep
    assert result.model.w.shape == (4, 3, 8, 2)
    torch.testing.assert_close(result.model.w.detach(), model.w.detach()[:, :, keep])
    _check_equivalent(model, x, result)


class _FourierUnit(nn.Module):
    """LaMa's FFC Fourier unit: the spectrum's real and imaginary parts stacked as
    channels ``2c, 2c + 1`` for a 1x1 conv, then recombined and transformed back."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.spec = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.stem(x))
        b, _, h, w = y.shape
        f = torch.fft.rfftn(y, dim=(-2, -1), norm="ortho")
        f = torch.view_as_real(f).permute(0, 1, 4, 2, 3).reshape(b, -1, h, w // 2 + 1)
        f = F.relu(self.spec(f)).view(b, -1, 2, h, w // 2 + 1).permute(0, 1, 3, 4, 2)
        f = torch.complex(f[..., 0], f[..., 1])
        return self.head(torch.fft.irfftn(f, s=(h, w), dim=(-2, -1), norm="ortho"))


def test_fourier_unit_prunes_real_and_imaginary_parts_in_pairs() -> None:
    model, x = _FourierUnit().eval(), torch.randn(2, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=5)
    stem = result.plan["modules"]["stem"]["keep"]["out"]
    spec = result.plan["modules"]["spec"]["keep"]
    assert spec["in"] == [2 * c + p for c in stem for p in (0, 1)]
    assert result.model.spec.out_channels == 8
    head = result.plan["modules"]["head"]["keep"]["in"]
    assert spec["out"] == [2 * c + p for c in head for p in (0, 1)]
    _check_equivalent(model, x, result)


class _Spectrogram(nn.Module):
    """Per-channel magnitude spectrograms of a conv's outputs (``stft`` over time)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.conv = nn.Conv1d(2, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)
        self.register_buffer("window", torch.hann_window(8))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.conv(x))
        z = torch.stft(y.flatten(0, 1), n_fft=8, hop_length=4, window=self.window,
                       return_complex=True)
        return self.head(z.abs().unflatten(0, (y.shape[0], -1)))


class _Resynthesis(nn.Module):
    """Each channel's spectrum scaled and turned back into a signal (``stft`` then
    ``istft`` over time)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(17)
        self.conv = nn.Conv1d(2, 8, 3, padding=1)
        self.head = nn.Conv1d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.conv(x))
        b, c, t = y.shape
        window = torch.hann_window(8)
        z = torch.stft(y.reshape(b * c, t), n_fft=8, hop_length=2, window=window,
                       return_complex=True)
        y = torch.istft(z * 0.5, n_fft=8, hop_length=2, window=window, length=t)
        return self.head(y.reshape(b, c, t))


@pytest.mark.parametrize("net, seed", [(_Spectrogram, 7), (_Resynthesis, 18)])
def test_stft_and_istft_keep_each_channels_signal(net: type[nn.Module], seed: int) -> None:
    """A spectrogram per channel (``stft``), and (``istft``) each channel's signal back."""
    model, x = net().eval(), torch.randn(2, 2, 32)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=seed)
    assert result.model.conv.out_channels == result.model.head.in_channels == 4
    assert result.plan["modules"]["head"]["keep"]["in"] == \
        result.plan["modules"]["conv"]["keep"]["out"]
    _check_equivalent(model, x, result)


class _FNet(nn.Module):
    """FNet's token mixing: the real part of a 2-D FFT over tokens and the hidden dim."""

    def __init__(self, mix: Mix) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.mix = mix
        self.embed = nn.Linear(8, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        h = h + self.mix(h)
        return self.head(h + self.fc2(F.gelu(self.fc1(h))))


@pytest.mark.parametrize("mix", [
    lambda h: torch.fft.fft2(h).real,
    lambda h: torch.fft.fft(torch.fft.fft(h, dim=-1), dim=-2).real,
    lambda h: torch.fft.irfft(torch.fft.rfft(h), n=16),
    lambda h: torch.fft.fftn(h).imag,
    lambda h: torch.fft.fftshift(h),
], ids=["fft2", "fft_fft", "rfft_hidden", "fftn_all", "fftshift_all"])
def test_fft_over_a_channel_dim_keeps_those_channels_whole(mix: Mix) -> None:
    model, x = _FNet(mix).eval(), torch.randn(2, 5, 8)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=9)
    assert result.model.embed.out_features == result.model.head.in_features == 16
    assert "transforms along dims" in result.coverage.fixed["embed.weight"]
    assert "which carry channels" in result.coverage.fixed["embed.weight"]
    assert result.model.fc1.out_features == 16  # the feed-forward still prunes
    _check_equivalent(model, x, result)


class _Similarity(nn.Module):
    """Two branches compared per position (over channels), the score gating a third."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(10)
        self.kind = kind
        self.q = nn.Conv2d(3, 16, 1)
        self.k = nn.Conv2d(3, 16, 1)
        self.v = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        q, k = F.relu(self.q(x)), F.relu(self.k(x))
        if self.kind == "cosine":
            score = F.cosine_similarity(q, k, dim=1).unsqueeze(1)
        elif self.kind == "cosine_spatial":  # over W: the channels pass through
            score = F.cosine_similarity(q, k.flip(-1), dim=-1).unsqueeze(-1)
        else:  # over the last dim of [B, H, W, C]
            score = F.pairwise_distance(q.permute(0, 2, 3, 1), k.permute(0, 2, 3, 1),
                                        keepdim=True).permute(0, 3, 1, 2)
        return self.head(F.relu(self.v(x)) * score)


@pytest.mark.parametrize("kind", ["cosine", "pairwise"])
def test_similarity_joins_both_inputs_index_by_index(kind: str) -> None:
    model, x = _Similarity(kind).eval(), torch.randn(2, 3, 5, 5)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=11)
    modules = result.plan["modules"]
    assert len(modules["q"]["keep"]["out"]) == 8
    assert modules["q"]["keep"]["out"] == modules["k"]["keep"]["out"]
    assert modules["v"]["keep"]["out"] == modules["head"]["keep"]["in"]
    assert len(result.coverage.prunable) == len(list(model.parameters()))
    _check_equivalent(model, x, result, _zero_removed_outputs)


def test_similarity_over_a_spatial_dim_keeps_channels_in_place() -> None:
    model, x = _Similarity("cosine_spatial").eval(), torch.randn(2, 3, 5, 5)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=12)
    modules = result.plan["modules"]
    # q, k and v meet channel by channel in the gate, so all three shrink alike
    assert modules["q"]["keep"]["out"] == modules["k"]["keep"]["out"] == \
        modules["v"]["keep"]["out"] == modules["head"]["keep"]["in"]
    assert result.model.head.in_channels == 8
    _check_equivalent(model, x, result, _zero_removed_outputs)


class _DistanceAttention(nn.Module):
    """Attention weighted by negative Euclidean distance between queries and keys."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(13)
        self.q = nn.Linear(6, 16)
        self.k = nn.Linear(6, 16)
        self.v = nn.Linear(6, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        attn = (-torch.cdist(self.q(x), self.k(x))).softmax(-1)
        return self.head(attn @ self.v(x))


def test_cdist_joins_the_two_inputs_over_the_feature_dim() -> None:
    model, x = _DistanceAttention().eval(), torch.randn(2, 5, 6)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=14)
    modules = result.plan["modules"]
    assert len(modules["q"]["keep"]["out"]) == 8
    assert modules["q"]["keep"]["out"] == modules["k"]["keep"]["out"]
    assert modules["v"]["keep"]["out"] == modules["head"]["keep"]["in"]
    _check_equivalent(model, x, result, _zero_removed_outputs)


class _Prototypes(nn.Module):
    """Distances to learned prototypes ``[K, C]``, read by a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(15)
        self.f = nn.Linear(6, 16)
        self.protos = nn.Parameter(torch.randn(10, 16))
        self.head = nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.cdist(F.relu(self.f(x)), self.protos))


def test_cdist_to_prototypes_cuts_both_prototype_axes() -> None:
    model, x = _Prototypes().eval(), torch.randn(2, 5, 6)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=16)
    features = result.plan["modules"]["f"]["keep"]["out"]
    kept = result.plan["modules"]["head"]["keep"]["in"]
    assert result.model.protos.shape == (len(kept), len(features)) == (5, 8)
    torch.testing.assert_close(result.model.protos.detach(),
                               model.protos.detach()[kept][:, features])
    with torch.no_grad():
        assert result.model(x).shape == (2, 5, 3)
        assert torch.equal(pk.prune(model, x, ratio=0.0).model(x), model(x))
