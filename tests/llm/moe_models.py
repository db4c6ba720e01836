"""Hand-written mixture-of-experts models and the reference that expert pruning must match:
the dense model with the dropped experts' router logits set to ``-inf``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_PRODUCTS = {F.linear, torch.matmul, torch.mm, torch.Tensor.matmul, torch.Tensor.__matmul__,
             torch.Tensor.mm}


class _MaskRouter(TorchFunctionMode):
    def __init__(self, masks: Mapping[int, torch.Tensor]) -> None:
        super().__init__()
        self.masks = masks

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _PRODUCTS and len(args) > 1 and id(args[1]) in self.masks:
            out = out + self.masks[id(args[1])].to(out.dtype)
        return out


@contextmanager
def routers_masked(removed: Mapping[torch.Tensor, Sequence[int]]) -> Iterator[None]:
    """Add ``-inf`` to the named expert columns of every product with a router weight:
    ``F.linear(x, w)`` for ``w`` of shape (E, H), ``x @ w`` for a raw (H, E) parameter."""
    masks = {}
    for weight, experts in removed.items():
        mask = torch.zeros(weight.shape[0] if _linear_style(weight) else weight.shape[1])
        mask[list(experts)] = float("-inf")
        masks[id(weight)] = mask
    with _MaskRouter(masks):
        yield


def _linear_style(weight: torch.Tensor) -> bool:
    return not getattr(weight, "raw_router", False)


def randomize_routers(model: nn.Module) -> None:
    """Routers N(0, 0.5) and selection biases zero: some families start with zero routers
    (every expert tied) or biases that would let a dropped expert win the masked reference."""
    from prunekit.llm.experts import find_moe_layers

    with torch.no_grad():
        for layer in find_moe_layers(model):
            layer.router_weight.normal_(0, 0.5)
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if "correction_bias" in name or "expert_bias" in name:
                tensor.zero_()


class Expert(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ListMoE(nn.Module):
    """The pre-Transformers-5 layout users still write: a ``ModuleList`` of experts, a
    ``gate`` Linear, softmax → top-k → renormalise, a loop over ``self.num_experts``."""

    def __init__(self, dim: int = 16, hidden: int = 24, experts: int = 6, top_k: int = 2):
        super().__init__()
        self.num_experts, self.top_k = experts, top_k
        self.gate = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(experts))

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, chosen experts) of every token, each (tokens, top_k)."""
        weights, chosen = self.gate(flat).softmax(-1).topk(self.top_k, dim=-1)
        return weights / weights.sum(-1, keepdim=True), chosen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        flat = x.reshape(-1, d)
        weights, chosen = self.route(flat)
        out = torch.zeros_like(flat)
        for e in range(self.num_experts):
            rows, slot = torch.where(chosen == e)
            if rows.numel():
                out.index_add_(0, rows, self.experts[e](flat[rows]) * weights[rows, slot, None])
        return out.reshape(b, t, d)


class StackedMoE(nn.Module):
    """Stacked expert weights (``num_experts`` leading every tensor), a router module with a
    weight and a bias, and a selection bias vector on the layer."""

    def __init__(self, dim: int = 16, hidden: int = 24, experts: int = 5, top_k: int = 2):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(dim, experts)
        self.experts = _Stack(dim, hidden, experts)
        self.register_buffer("expert_bias", torch.zeros(experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.sigmoid(self.router(x))
        _, chosen = (scores + self.expert_bias).topk(self.top_k, dim=-1)
        weights = scores.gather(-1, chosen)
        return self.experts(x, chosen, weights / weights.sum(-1, keepdim=True))


class _Stack(nn.Module):
    def __init__(self, dim: int, hidden: int, experts: int) -> None:
        super().__init__()
        self.num_experts = experts
        self.up = nn.Parameter(torch.randn(experts, hidden, dim) / dim ** 0.5)
        self.down = nn.Parameter(torch.randn(experts, dim, hidden) / hidden ** 0.5)

    def forward(self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        hot = F.one_hot(chosen, self.num_experts).to(x.dtype)  # (..., k, E)
        gate = (hot * weights.unsqueeze(-1)).sum(-2)  # (..., E)
        h = F.gelu(torch.einsum("...d,ehd->...eh", x, self.up))
        return torch.einsum("...eh,edh,...e->...d", h, self.down, gate)


class TinyMoELM(nn.Module):
    """Embedding → blocks of (LayerNorm, MoE) with residuals → LM head."""

    def __init__(self, moe: type[nn.Module] = ListMoE, layers: int = 2, vocab: int = 50,
                 dim: int = 16, **kwargs: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.layers = nn.ModuleList(moe(dim=dim, **kwargs) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for norm, layer in zip(self.norms, self.layers, strict=True):
            x = x + layer(norm(x))
        return self.head(x)


class _ExpertScale(nn.Module):
    """A per-expert scale kept in a submodule of the experts (Ergo's post-expert norms)."""

    def __init__(self, experts: int, dim: int) -> None:
        super().__init__()
        self.num_experts = experts
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(experts, dim))

    def forward(self, y: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        return y * self.weight[chosen]


class NormedStack(_Stack):
    """Stacked experts whose outputs each pass their own expert's scale."""

    def __init__(self, dim: int, hidden: int, experts: int) -> None:
        super().__init__(dim, hidden, experts)
        self.post = _ExpertScale(experts, dim)

    def forward(self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for slot in range(chosen.shape[-1]):
            e = chosen[..., slot]
            h = F.gelu(torch.einsum("...d,...hd->...h", x, self.up[e]))
            y = self.post(torch.einsum("...h,...dh->...d", h, self.down[e]), e)
            out = out + y * weights[..., slot, None]
        return out


class NormedMoE(StackedMoE):
    def __init__(self, dim: int = 16, hidden: int = 24, experts: int = 5, top_k: int = 2):
        super().__init__(dim, hidden, experts, top_k)
        self.experts = NormedStack(dim, hidden, experts)


class HashMoE(ListMoE):
    """Hash routing: a fixed token-to-expert table picks the experts."""

    def __init__(self, dim: int = 16, hidden: int = 24, experts: int = 6, top_k: int = 2):
        super().__init__(dim, hidden, experts, top_k)
        self.register_buffer("tid2eid", torch.randint(0, experts, (50, top_k)))


class ShazeerMoE(nn.Module):
    """Noisy top-k gating as in Shazeer et al. 2017 and its popular re-implementations: raw
    ``w_gate``/``w_noise`` parameters of shape (dim, experts) used as ``x @ w_gate``, top-k of
    the logits, softmax over the k, a loop over ``self.num_experts``."""

    def __init__(self, dim: int = 16, hidden: int = 24, experts: int = 6, top_k: int = 2):
        super().__init__()
        self.num_experts, self.k = experts, top_k
        self.w_gate = nn.Parameter(torch.randn(dim, experts) / dim ** 0.5)
        self.w_noise = nn.Parameter(torch.zeros(dim, experts))
        self.w_gate.raw_router = True  # type: ignore[attr-defined]  # for routers_masked
        self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        flat = x.reshape(-1, d)
        logits = flat @ self.w_gate
        if self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(flat @ self.w_noise)
        top, index = logits.topk(min(self.k + 1, self.num_experts), dim=1)
        gates = torch.zeros_like(logits).scatter(1, index[:, :self.k],
                                                 top[:, :self.k].softmax(1))
        out = torch.zeros_like(flat)
        for e in range(self.num_experts):
            rows = gates[:, e].nonzero().squeeze(1)
            if rows.numel():
                out.index_add_(0, rows, self.experts[e](flat[rows]) * gates[rows, e, None])
        return out.reshape(b, t, d)


class DictMoE(ListMoE):
    """Experts in a ModuleDict keyed ``expert_0 …`` (Hugging Face Switch Transformers), an
    int step counter and a per-expert output scale ``alpha`` on the layer, and the last
    auxiliary loss kept on the module (a tensor that needs grad after a training forward)."""

    def __init__(self, dim: int = 16, hidden: int = 24, experts: int = 6, top_k: int = 2):
        super().__init__(dim, hidden, experts, top_k)
        self.experts = nn.ModuleDict(  # type: ignore[assignment]
            {f"expert_{i}": Expert(dim, hidden) for i in range(experts)})
        self.alpha = nn.Parameter(1 + 0.5 * torch.randn(experts))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        flat = x.reshape(-1, d)
        probs = self.gate(flat).softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        self.aux_loss = (probs.mean(0) ** 2).sum() * self.num_experts
        self.step += 1
        out = torch.zeros_like(flat)
        for e in range(self.num_experts):
            rows, slot = torch.where(chosen == e)
            if rows.numel():
                y = self.experts[f"expert_{e}"](flat[rows]) * self.alpha[e]
                out.index_add_(0, rows, y * weights[rows, slot, None])
        return out.reshape(b, t, d)


class _Wrapped(nn.Module):
    def __init__(self, dim: int, hidden: int, experts: int) -> None:
        super().__init__()
        self.deepspeed_experts = nn.ModuleList(Expert(dim, hidden) for _ in range(experts))


class NestedMoE(ListMoE):
    """DeepSpeed-MoE layout: the expert list one level down, ``experts.deepspeed_experts``."""

    def __init__(self, dim: int = 16, hidden: int = 24, experts: int = 6, top_k: int = 2):
        super().__init__(dim, hidden, experts, top_k)
        self.experts = _Wrapped(dim, hidden, experts)  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.experts
        self.experts = inner.deepspeed_experts  # type: ignore[assignment]
        try:
            return super().forward(x)
        finally:
            self.experts = inner  # type: ignore[assignment]


class CosineMoE(ListMoE):
    """X-MoE routing: project to a low dim, cosine similarity with an expert embedding
    ``wg`` (experts, low), divided by a temperature."""

    def __init__(self, dim: int = 16, hidden: int = 24, experts: int = 6, top_k: int = 2):
        super().__init__(dim, hidden, experts, top_k)
        del self.gate
        self.reduce = nn.Linear(dim, 4, bias=False)
        self.wg = nn.Parameter(torch.randn(experts, 4))

    def logits(self, flat: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.reduce(flat), dim=-1) @ F.normalize(self.wg, dim=-1).T / 0.3

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights, chosen = self.logits(flat).softmax(-1).topk(self.top_k, dim=-1)
        return weights, chosen


class HiddenListMoE(ListMoE):
    """An MoE layer whose expert list is named ``ffns``: not found by drop_experts."""

    def __init__(self, dim: int = 16, hidden: int = 24, experts: int = 6, top_k: int = 2):
        super().__init__(dim, hidden, experts, top_k)
        self.ffns = self.experts
        del self.experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.experts = self.ffns
        try:
            return super().forward(x)
        finally:
            del self.experts


class MixedLM(TinyMoELM):
    """Layer 0 a findable MoE, layer 1 one that is not (both hold num_experts=6)."""

    def __init__(self) -> None:
        super().__init__(ListMoE)
        self.layers[1] = HiddenListMoE()
