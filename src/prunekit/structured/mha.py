"""``PrunedMultiheadAttention``: ``nn.MultiheadAttention`` with fewer heads than its width.

torch's module ties ``num_heads · head_dim`` to ``embed_dim`` (the query and output width),
so whole heads cannot leave it. This subclass keeps its call signature, return values,
parameter names (so state dicts load unchanged) and math (the same ops in the same order,
so outputs match to float rounding), but sizes the heads independently: the q/k/v
projections make ``num_heads · head_dim`` channels and ``out_proj`` maps them back to
``embed_dim``. Structured pruning swaps it in for an ``nn.MultiheadAttention`` whose heads
or width it cuts (the plan records the swap; see ``prunekit.structured.plan``).

torch's fused fast paths (``nn.TransformerEncoderLayer`` in eval mode) assume
``num_heads · head_dim == embed_dim``; ``_qkv_same_embed_dim``, which gates them, is true
only while that holds, so they either stay exact or are bypassed. A NestedTensor (which
``nn.TransformerEncoder`` builds from a padding mask) is padded, attended with the
matching key padding mask and nested again.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

__all__ = ["PrunedMultiheadAttention"]


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose ``num_heads · head_dim`` may differ from ``embed_dim``
    (``head_dim`` defaults to ``embed_dim // num_heads``); see the module docstring.

    ``head_origin`` is ``(heads before pruning, kept head indices)`` once heads were cut: a
    3-D ``attn_mask`` built for the original head count has its kept heads selected."""

    head_origin: tuple[int, tuple[int, ...]] | None

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = False,
                 device: Any = None, dtype: Any = None, *, head_dim: int | None = None) -> None:
        nn.Module.__init__(self)
        self._setup(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim,
                    batch_first, {"device": device, "dtype": dtype}, head_dim, None)
        self._reset_parameters()

    def _setup(self, embed_dim: int, num_heads: int, dropout: float, bias: bool,
               add_bias_kv: bool, add_zero_attn: bool, kdim: int | None, vdim: int | None,
               batch_first: bool, factory: dict[str, Any], head_dim: int | None,
               out_proj: NonDynamicallyQuantizableLinear | None) -> None:
        """__init__ without the parameter init; ``out_proj`` given: used instead of a new one."""
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads),
                            ("head_dim", head_dim), ("kdim", kdim), ("vdim", vdim)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"PrunedMultiheadAttention: {name}={value!r} must be a "
                                 f"positive int")
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(f"PrunedMultiheadAttention: embed_dim={embed_dim} is not "
                                 f"divisible by num_heads={num_heads}; pass head_dim=...")
            head_dim = embed_dim // num_heads
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.dropout, self.batch_first, self.add_zero_attn = dropout, batch_first, add_zero_attn
        self.head_origin = None
        inner = num_heads * head_dim
        if self.kdim == embed_dim and self.vdim == embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim, **factory))
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(inner, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(inner, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(inner, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * inner, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = out_proj if out_proj is not None else \
            NonDynamicallyQuantizableLinear(inner, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, inner, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, inner, **factory))
        else:
            self.bias_k = self.bias_v = None

    @classmethod
    def from_module(cls, source: nn.MultiheadAttention) -> PrunedMultiheadAttention:
        """The same attention as ``source``, sharing its parameters and ``out_proj``."""
        if not isinstance(source, nn.MultiheadAttention):
            raise TypeError(f"from_module() needs an nn.MultiheadAttention, got "
                            f"{type(source).__name__}")
        args = (source.embed_dim, source.num_heads, source.dropout,
                source.in_proj_bias is not None, source.bias_k is not None,
                source.add_zero_attn, source.kdim, source.vdim, source.batch_first)
        if cls.__init__ is PrunedMultiheadAttention.__init__:
            # what cls(*args, device="meta") builds, minus the parameter init (meta tensors
            # hold no values, it draws no random numbers) and the out_proj replaced below
            new = cls.__new__(cls)
            nn.Module.__init__(new)
            new._setup(*args, {"device": "meta", "dtype": None}, source.head_dim,
                       source.out_proj)
        else:  # a subclass's own __init__ runs (and builds its own out_proj)
            new = cls(*args, device="meta", head_dim=source.head_dim)
            new.out_proj = source.out_proj
        for name in new._parameters:  # the same layout: registered (or None) on both
            new._parameters[name] = getattr(source, name)
        new.head_origin = getattr(source, "head_origin", None)
        new.train(source.training)
        return new

    @property
    def _qkv_same_embed_dim(self) -> bool:
        """What torch's fused fast paths check: true only when they would compute this."""
        return self.in_proj_weight is not None and \
            self.num_heads * self.head_dim == self.embed_dim

    def _reset_parameters(self) -> None:
        if self.in_proj_weight is not None:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for weight in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            if self.out_proj.bias is not None:
                nn.init.constant_(self.out_proj.bias, 0.0)
        for extra in (self.bias_k, self.bias_v):
            if extra is not None:
                nn.init.xavier_normal_(extra)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"head_dim={self.head_dim}, batch_first={self.batch_first}")

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """As ``nn.MultiheadAttention.forward``."""
        if query.is_nested or key.is_nested or value.is_nested:
            return self._forward_nested(query, key, value, key_padding_mask, need_weights,
                                        attn_mask, average_attn_weights, is_causal)
        is_batched = query.dim() == 3
        key_padding_mask = F._canonical_mask(
            mask=key_padding_mask, mask_name="key_padding_mask",
            other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
            target_type=query.dtype)
        attn_mask = F._canonical_mask(
            mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
            target_type=query.dtype, check_other=False)
        if self.batch_first and is_batched:  # keep identities: they pick the packed path
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        out, weights = self._attend(query, key, value, key_padding_mask, need_weights,
                                    attn_mask, average_attn_weights, is_causal)
        if self.batch_first and is_batched:
            out = out.transpose(1, 0)
        return out, weights

    def _forward_nested(self, query: Tensor, key: Tensor, value: Tensor,
                        key_padding_mask: Tensor | None, need_weights: bool,
                        attn_mask: Tensor | None, average_attn_weights: bool,
                        is_causal: bool) -> tuple[Tensor, Tensor | None]:
        if not (self.batch_first and query is key and key is value
                and key_padding_mask is None and attn_mask is None):
            raise ValueError(
                "PrunedMultiheadAttention takes a NestedTensor only for batch-first "
                "self-attention without masks (as nn.TransformerEncoder passes it); pass a "
                "padded tensor with key_padding_mask instead")
        lengths = torch.tensor([t.shape[0] for t in query.unbind()])
        padded = query.to_padded_tensor(0.0)
        padding = torch.arange(padded.shape[1])[None, :] >= lengths[:, None]
        out, weights = self.forward(padded, padded, padded, padding.to(padded.device),
                                    need_weights, None, average_attn_weights, is_causal)
        nested = torch._nested_tensor_from_mask(out, ~padding.to(out.device), mask_check=False)
        return nested, weights

    def _select_mask_heads(self, attn_mask: Tensor, bsz: int) -> Tensor:
        """A 3-D mask built for the heads before pruning, narrowed to the kept heads."""
        origin = self.head_origin
        if origin is None or attn_mask.dim() != 3 or origin[0] == self.num_heads or \
                attn_mask.shape[0] != bsz * origin[0]:
            return attn_mask
        kept = torch.tensor(origin[1], device=attn_mask.device)
        per_head = attn_mask.view(bsz, origin[0], *attn_mask.shape[1:])
        return per_head.index_select(1, kept).reshape(bsz * self.num_heads,
                                                      *attn_mask.shape[1:])

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v in the order of torch's ``_in_projection_packed`` / ``_in_projection``,
        which cannot be called: both size the projections by the input width (``embed_dim``),
        not ``num_heads · head_dim``."""
        inner = self.num_heads * self.head_dim
        bias = self.in_proj_bias
        if self.in_proj_weight is None:
            b_q, b_k, b_v = bias.chunk(3) if bias is not None else (None, None, None)
            return (F.linear(query, self.q_proj_weight, b_q),
                    F.linear(key, self.k_proj_weight, b_k),
                    F.linear(value, self.v_proj_weight, b_v))
        weight = self.in_proj_weight
        if key is value:
            if query is key:
                proj = F.linear(query, weight, bias)
                proj = proj.unflatten(-1, (3, inner)).unsqueeze(0).transpose(0, -2) \
                    .squeeze(-2).contiguous()
                return proj[0], proj[1], proj[2]
            w_q, w_kv = weight.split([inner, inner * 2])
            b_q, b_kv = bias.split([inner, inner * 2]) if bias is not None else (None, None)
            q_proj = F.linear(query, w_q, b_q)
            kv = F.linear(key, w_kv, b_kv)
            kv = kv.unflatten(-1, (2, inner)).unsqueeze(0).transpose(0, -2).squeeze(-2) \
                .contiguous()
            return q_proj, kv[0], kv[1]
        w_q, w_k, w_v = weight.chunk(3)
        b_q, b_k, b_v = bias.chunk(3) if bias is not None else (None, None, None)
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def _attend(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None, need_weights: bool, attn_mask: Tensor | None,
                average_attn_weights: bool, is_causal: bool) -> tuple[Tensor, Tensor | None]:
        """``F.multi_head_attention_forward`` (sequence-first), with ``num_heads · head_dim``
        in place of ``embed_dim`` where the heads are laid out."""
        heads, head_dim = self.num_heads, self.head_dim
        inner = heads * head_dim
        if attn_mask is not None:
            bsz_guess = query.shape[1] if query.dim() == 3 else 1
            attn_mask = self._select_mask_heads(attn_mask, bsz_guess)
        is_batched = F._mha_shape_check(  # type: ignore[attr-defined]
            query, key, value, key_padding_mask, attn_mask, heads)
        if not is_batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        tgt_len, bsz, _ = query.shape
        src_len = key.shape[0]
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                "module method `generate_square_subsequent_mask` to create this mask.")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # SDPA applies the causal mask itself
        elif key_padding_mask is not None:
            is_causal = False  # the merged mask is no longer causal
        if key.shape[:2] != value.shape[:2]:
            raise RuntimeError(f"key's sequence and batch dims {tuple(key.shape[:2])} do not "
                               f"match value's {tuple(value.shape[:2])}")
        q, k, v = self._project(query, key, value)
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if attn_mask.shape != (tgt_len, src_len):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, "
                                       f"but should be {(tgt_len, src_len)}.")
                attn_mask = attn_mask.unsqueeze(0)
            elif attn_mask.shape != (bsz * heads, tgt_len, src_len):
                raise RuntimeError(f"The shape of the 3D attn_mask is {attn_mask.shape}, but "
                                   f"should be {(bsz * heads, tgt_len, src_len)}.")
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        q = q.reshape(tgt_len, bsz * heads, head_dim).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * heads, head_dim).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * heads, head_dim).transpose(0, 1)
        if self.add_zero_attn:
            zeros = torch.zeros((bsz * heads, 1, head_dim), dtype=k.dtype, device=k.device)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        src_len = k.shape[1]
        if key_padding_mask is not None:
            if key_padding_mask.shape != (bsz, src_len):
                raise RuntimeError(f"expecting key_padding_mask shape of {(bsz, src_len)}, but "
                                   f"got {tuple(key_padding_mask.shape)}")
            key_padding_mask = key_padding_mask.view(bsz, 1, 1, src_len) \
                .expand(-1, heads, -1, -1).reshape(bsz * heads, 1, src_len)
            attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
        dropout_p = self.dropout if self.training else 0.0
        weights: Tensor | None = None
        if need_weights:
            q_scaled = q * math.sqrt(1.0 / float(head_dim))
            if attn_mask is not None:
                scores = torch.baddbmm(attn_mask, q_scaled, k.transpose(-2, -1))
            else:
                scores = torch.bmm(q_scaled, k.transpose(-2, -1))
            probs = F.softmax(scores, dim=-1)
            if dropout_p > 0.0:
                probs = F.dropout(probs, p=dropout_p)
            out = torch.bmm(probs, v).transpose(0, 1).reshape(tgt_len * bsz, inner)
            weights = probs.view(bsz, heads, tgt_len, src_len)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        else:
            if attn_mask is not None:
                if attn_mask.shape[0] == 1 and attn_mask.dim() == 3:
                    attn_mask = attn_mask.unsqueeze(0)
                else:
                    attn_mask = attn_mask.view(bsz, heads, -1, src_len)
            out = F.scaled_dot_product_attention(
                q.view(bsz, heads, tgt_len, head_dim), k.view(bsz, heads, src_len, head_dim),
                v.view(bsz, heads, src_len, head_dim), attn_mask, dropout_p, is_causal)
            out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, inner)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        out = out.view(tgt_len, bsz, out.shape[1])
        if not is_batched:
            out = out.squeeze(1)
            if weights is not None:
                weights = weights.squeeze(0)
        return out, weights
