"""Tensors a model caches in plain dict attributes, and copying a model that holds some.

Models keep tensors computed from their parameters in dicts between calls: timm's LeViT,
EfficientFormer and TinyViT fill ``self.attention_bias_cache`` in eval mode with the
attention biases gathered for the current device. Such a dict is a *cache* here when its
attribute name says so (``*cache*``): its entries can be dropped at any time, since the
forward recomputes them. Structured pruning relies on that twice:

- the trace runs with every cache emptied (:func:`recomputed_caches`), so that it sees the
  cached tensor being computed from its parameters (and cuts them with their channels)
  instead of meeting a tensor of unknown origin; the contents are put back afterwards,
  and entries the traced forward added to any other dict attribute are removed again, so
  the model is left as it was;
- the pruned model starts with its caches empty (:func:`clear_caches`): a tensor cached
  before the cut would have the old width.

``copy.deepcopy`` refuses tensors that are not graph leaves, which a cache filled while
autograd recorded holds; :func:`copy_model` copies such tensors detached instead, and gives
each parametrized module of the copy a class of its own (:func:`own_parametrized_class`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["clear_caches", "copy_model", "own_parametrized_class", "recomputed_caches"]

# nn.Module's own attributes (parameter, buffer, submodule and hook registries): never a
# cache of the model's code
_MODULE_OWN = frozenset(nn.Module().__dict__)
# a module's forward hook registries: hooks its code adds during the block are removed
_HOOK_REGISTRIES = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                    "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")
_COMPRESSED = frozenset((torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc))
_NUMBERS = frozenset((int, float, bool))  # plain numbers and flags a forward may set


def _dict_attributes(module: nn.Module) -> Iterator[tuple[str, dict[Any, Any]]]:
    for key, value in module.__dict__.items():
        if isinstance(value, dict) and key not in _MODULE_OWN:
            yield key, value


def _is_cache(name: str) -> bool:
    return "cache" in name.lower()


@contextlib.contextmanager
def recomputed_caches(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Run the block with every cache dict of ``modules`` emptied; afterwards each cache
    holds what it held before, every other dict attribute loses the keys the block added
    (values it replaced are left replaced), and each module loses the plain attributes the
    block added or set where they were None (PyG's ``GCNConv(cached=True)`` keeps the
    example graph's normalised edges in ``_cached_edge_index``; a layer keeps its last
    auxiliary loss); buffers the block re-bound (``self.ema = 0.9 * self.ema + ...``) and
    plain int, float and bool attributes it changed (``self.calls += 1``, Glow ActNorm's
    ``self.inited = True`` after its data-dependent init) are put back. A module
    whose class the block changed (a lazy layer that materialised) keeps everything."""
    caches: list[tuple[dict[Any, Any], dict[Any, Any]]] = []
    others: list[tuple[dict[Any, Any], frozenset[Any]]] = []
    states: list[tuple[nn.Module, type, int, set[str], list[str]]] = []
    kept: list[tuple[dict[str, Any], str, Any]] = []  # buffers and plain numbers, by key
    hooks: list[tuple[dict[int, Any], frozenset[int]]] = []
    for module in modules:
        state = module.__dict__
        buffers = state.get("_buffers")
        if buffers:  # a buffer the block re-binds (self.ema = 0.9 * self.ema + ...) goes back
            kept.extend((buffers, key, value) for key, value in buffers.items())
        mine = state.keys() - _MODULE_OWN  # (a set difference in C: the registries skipped)
        unset = []
        for key in mine:
            value = state[key]
            if value is None:
                unset.append(key)
            elif type(value) in _NUMBERS:  # self.calls += 1; ActNorm's self.inited = True
                kept.append((state, key, value))
            elif isinstance(value, dict):
                if _is_cache(key):
                    caches.append((value, dict(value)))
                    value.clear()
                else:
                    others.append((value, frozenset(value)))
        states.append((module, type(module), len(state), mine, unset))
        hooks.extend((registry, frozenset(registry)) for registry in
                     (state.get(name) for name in _HOOK_REGISTRIES) if registry is not None)
    try:
        yield
    finally:
        for registry, handles in hooks:  # hooks the block's code registered (transformers
            # installs its output-capturing hooks on the first forward, with a flag this
            # undoes below: both go, or the next forward installs the hooks twice)
            if len(registry) != len(handles):
                for handle in [h for h in registry if h not in handles]:
                    del registry[handle]
        for cache, saved in caches:
            cache.clear()
            cache.update(saved)
        for mapping, keys in others:
            if len(mapping) != len(keys) or not keys.issuperset(mapping):
                for added in [k for k in mapping if k not in keys]:
                    del mapping[added]
        for module, kind, count, mine, unset in states:
            if type(module) is not kind:
                continue
            state = module.__dict__
            if len(state) != count:
                for added in state.keys() - _MODULE_OWN - mine:
                    del state[added]
            for key in unset:
                if state.get(key, None) is not None:
                    state[key] = None
        for mapping, key, value in kept:
            if key in mapping and mapping[key] is not value:
                mapping[key] = value


def clear_caches(modules: Iterable[nn.Module]) -> None:
    """Empty every cache dict of ``modules`` (the dict objects are kept)."""
    for module in modules:
        for key, value in _dict_attributes(module):
            if _is_cache(key):
                value.clear()


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, except that caches are copied empty, a tensor attribute
    that is not a graph leaf (cached while autograd recorded) is copied detached and a
    compressed sparse buffer (CSR, CSC, BSR, BSC) is cloned, where deepcopy would raise,
    parametrized modules get a class of their own, and a parameter's own attributes (the
    optimizer flags ``_no_weight_decay`` of Mamba, ``_optim`` of S4) are copied."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for key, value in module.__dict__.items():
            if key in _MODULE_OWN:
                continue
            if isinstance(value, dict):
                if _is_cache(key):
                    memo[id(value)] = empty = copy.copy(value)  # keeps its type
                    empty.clear()
                    continue
                values: Iterable[Any] = value.values()
            elif isinstance(value, (list, tuple)):
                values = value
            else:
                values = (value,)
            for item in values:
                if isinstance(item, Tensor) and not item.is_leaf:
                    memo[id(item)] = item.detach().clone()
        for buffer in module._buffers.values():  # deepcopy cannot copy a CSR buffer
            if buffer is not None and buffer.layout in _COMPRESSED:
                memo[id(buffer)] = buffer.clone()
    copied = copy.deepcopy(model, memo)
    for module in copied.modules():
        own_parametrized_class(module)
    pairs = zip(model.named_parameters(remove_duplicate=False),
                copied.named_parameters(remove_duplicate=False), strict=True)
    for (_, param), (_, twin) in pairs:  # Parameter's deepcopy drops them: _no_weight_decay, _optim
        if param.__dict__ and not twin.__dict__:
            twin.__dict__.update(copy.deepcopy(param.__dict__, memo))
    return copied


def own_parametrized_class(module: nn.Module) -> None:
    """Give ``module`` a private copy of torch's injected ``Parametrized<Cls>`` class.

    ``copy.deepcopy`` of a parametrized module shares that class with the original, and
    ``register_parametrization`` / ``remove_parametrizations`` edit properties *on the class*:
    without this, removing a parametrization from a copy would delete ``weight`` from the
    user's original model.
    """
    if not parametrize.is_parametrized(module):
        return
    cls = type(module)
    attrs = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, attrs)
