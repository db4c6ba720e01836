"""Attention, recurrent, embedding/tied-weight and parameter-node families: attributes that
code reads at run time are rewritten, and pruning is equivalent to zeroing where it holds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.structured.zoo import BY_NAME, call
from torch import Tensor, nn

from prunekit.structured import prune


def test_multihead_attention_attributes_follow() -> None:
    entry = BY_NAME["vit"]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.5)
    attn = result.model.blocks[0].self_attention  # whole heads go: 4 -> 2 of width 16
    assert attn.embed_dim == 32 and attn.head_dim == 16 and attn.num_heads == 2
    assert attn.in_proj_weight.shape == (96, 32) and attn.out_proj.in_features == 32
    assert result.model.class_token.shape == (1, 1, 32)
    assert result.model.pos_embedding.shape[-1] == 32
    with torch.no_grad():
        assert result.model(inputs).shape == (2, 10)


@pytest.mark.parametrize("name", ["transformer_encoder", "swin", "gpt", "llama"])
def test_transformers_prune_and_keep_heads_consistent(name: str) -> None:
    entry = BY_NAME[name]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.5)
    assert result.params_kept < 0.75
    with torch.no_grad():
        call(result.model, inputs)


def test_window_attention_prunes_whole_heads_and_bias_table() -> None:
    entry = BY_NAME["swin"]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.5)
    before = dict(model.named_modules())
    for name, module in result.model.named_modules():
        if not hasattr(module, "relative_position_bias_table"):
            continue
        old = before[name]
        assert module.num_heads == old.num_heads // 2 and module.head_dim == old.head_dim
        assert module.relative_position_bias_table.shape[1] == module.num_heads
        assert module.qkv.out_features == 3 * module.num_heads * module.head_dim
        assert result.plan["attrs"][name]["num_heads"] == module.num_heads


def test_grouped_query_attention_keeps_query_groups() -> None:
    entry = BY_NAME["llama"]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.5)
    for old, new in zip(model.modules(), result.model.modules(), strict=True):
        if hasattr(old, "num_key_value_heads"):
            assert new.num_key_value_heads == old.num_key_value_heads // 2
            assert new.num_heads == old.num_heads // 2 and new.head_dim == old.head_dim
            assert new.k_proj.out_features == new.num_key_value_heads * new.head_dim
            assert new.q_proj.out_features == new.num_heads * new.head_dim
    with torch.no_grad():
        assert call(result.model, inputs).shape == call(model, inputs).shape


class HeadAttention(nn.Module):
    """Hand-written attention with heads sized by attributes, no cross-channel norm."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


def test_hand_written_attention_equivalence() -> None:
    torch.manual_seed(0)
    model, x = HeadAttention().eval(), torch.randn(2, 5, 16)
    result = prune(model, x, ratio=0.5, importance="random", seed=1)
    assert result.model.head_dim == 8 and result.model.num_heads == 1
    zeroed = HeadAttention().eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():  # q, k and v channels go; o stops reading them
        for proj in ("q", "k", "v"):
            keep = result.plan["modules"][proj]["keep"]["out"]
            drop = sorted(set(range(16)) - set(keep))
            getattr(zeroed, proj).weight[drop] = 0
            getattr(zeroed, proj).bias[drop] = 0
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["lstm_classifier", "gru_bidirectional"])
def test_recurrent_hidden_units(name: str) -> None:
    entry = BY_NAME[name]
    model, inputs = entry.build().eval(), entry.example_inputs()
    rnn = next(m for m in model.modules() if isinstance(m, nn.RNNBase))
    result = prune(model, inputs, ratio=0.5)
    pruned = next(m for m in result.model.modules() if isinstance(m, nn.RNNBase))
    assert pruned.hidden_size == rnn.hidden_size // 2
    gates = 4 if isinstance(rnn, nn.LSTM) else 3
    assert pruned.weight_hh_l0.shape == (gates * pruned.hidden_size, pruned.hidden_size)
    with torch.no_grad():
        assert call(result.model, inputs).shape == call(model, inputs).shape


def test_lstm_equivalence_on_removed_hidden_units() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True)
    head = nn.Linear(8, 3)
    model = nn.Sequential()
    model.lstm, model.head = lstm, head

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.head = lstm, head

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.lstm(x)[0][:, -1])

    net, x = Net().eval(), torch.randn(2, 4, 6)
    result = prune(net, x, ratio=0.5, importance="random")
    keep = result.plan["modules"]["lstm"]["keep"]["hidden"]
    drop = sorted(set(range(8)) - set(keep))
    zeroed = Net().eval()
    zeroed.load_state_dict(net.state_dict())
    with torch.no_grad():  # a hidden unit whose gates are all zero stays at 0 forever
        for layer in range(2):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                tensor = getattr(zeroed.lstm, f"{kind}_l{layer}")
                for gate in range(4):
                    tensor[[gate * 8 + j for j in drop]] = 0
        zeroed.lstm._init_flat_weights()
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)


def test_tied_embedding_and_head_stay_tied() -> None:
    entry = BY_NAME["tied_lm"]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.5)
    emb = next(m for m in result.model.modules() if isinstance(m, nn.Embedding))
    tied = [m for m in result.model.modules() if isinstance(m, nn.Linear)
            and m.weight is emb.weight]
    assert tied, "tied weight was split into two tensors"
    assert emb.embedding_dim < next(
        m for m in model.modules() if isinstance(m, nn.Embedding)).embedding_dim
    assert tied[0].in_features == emb.embedding_dim


def test_convnext_layer_scale_and_channels_last_norm() -> None:
    entry = BY_NAME["convnext"]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.5)
    block = result.model.stage1[0]
    assert block.gamma.shape[0] == block.dwconv.out_channels == block.norm.normalized_shape[0]
    stem_norm = result.model.stem[1]
    assert stem_norm.normalized_shape == (stem_norm.weight.shape[0],)


def test_embedding_dim_is_pruned() -> None:
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.fc = nn.Linear(8, 3)

        def forward(self, ids: Tensor) -> Tensor:
            return self.fc(self.emb(ids).mean(1))

    result = prune(Bag(), torch.randint(0, 20, (2, 5)), ratio=0.5)
    assert result.model.emb.embedding_dim == 4 and result.model.emb.weight.shape == (20, 4)


class GroupedQueryAttention(nn.Module):
    """4 query heads share 2 key/value heads; no cross-channel norm, so zeroing holds."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = 4, 2, 4
        self.q = nn.Linear(dim, 16)
        self.k, self.v = nn.Linear(dim, 8), nn.Linear(dim, 8)
        self.o = nn.Linear(16, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        groups = self.num_heads // self.num_key_value_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


def test_grouped_query_attention_equivalence() -> None:
    torch.manual_seed(0)
    model, x = GroupedQueryAttention().eval(), torch.randn(2, 5, 16)
    result = prune(model, x, ratio=0.5, importance="random", seed=4)
    pruned = result.model
    assert (pruned.num_heads, pruned.num_key_value_heads) == (2, 1)
    zeroed = GroupedQueryAttention().eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        for proj, width in (("q", 16), ("k", 8), ("v", 8)):
            drop = sorted(set(range(width)) - set(result.plan["modules"][proj]["keep"]["out"]))
            getattr(zeroed, proj).weight[drop] = 0
            getattr(zeroed, proj).bias[drop] = 0
        kept_kv = result.plan["modules"]["k"]["keep"]["out"][0] // 4
        kept_q = {c // 4 for c in result.plan["modules"]["q"]["keep"]["out"]}
        assert kept_q == {2 * kept_kv, 2 * kept_kv + 1}  # the query heads of the kept group
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-4, atol=1e-5)


def test_token_mixing_linear_passes_channels_through() -> None:
    entry = BY_NAME["mlp_mixer"]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune(model, inputs, ratio=0.5)
    assert result.model.norm.normalized_shape == (16,)  # the residual width was pruned
    assert result.model.blocks[0].token_mlp[0].in_features == 64  # tokens are not channels
    assert result.params_kept < 0.55  # the token MLPs keep their width
