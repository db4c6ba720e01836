"""Calling a model on example inputs given as a tensor, a tuple of tensors or a dict of kwargs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import is_dataclass
from typing import Any

import torch
from torch import nn

ExampleInputs = torch.Tensor | Sequence[Any] | Mapping[str, Any]


def run_model(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """Call ``model`` the way the example inputs imply: tensor → positional, tuple/list →
    unpacked positional, dict → keyword arguments (Hugging Face style)."""
    if isinstance(example_inputs, torch.Tensor):
        return model(example_inputs)
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    raise TypeError(
        "example_inputs must be a Tensor, a tuple/list of positional inputs or a dict of "
        f"keyword inputs, got {type(example_inputs).__name__}"
    )


def map_inputs(example_inputs: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``example_inputs`` with ``fn`` applied to every tensor inside a (nested)
    tuple/list/dict; anything else is kept as it is."""
    if isinstance(example_inputs, torch.Tensor):
        return fn(example_inputs)
    if isinstance(example_inputs, Mapping):
        return {k: map_inputs(v, fn) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        mapped = [map_inputs(v, fn) for v in example_inputs]
        if hasattr(example_inputs, "_fields"):  # a namedtuple (a PackedSequence): by position
            return type(example_inputs)(*mapped)
        return type(example_inputs)(mapped)
    return example_inputs


def move_inputs(example_inputs: Any, device: torch.device | str) -> Any:
    """Move every tensor inside a (nested) tuple/list/dict to ``device``."""
    return map_inputs(example_inputs, lambda t: t.to(device))


def copied_inputs(example_inputs: Any) -> Any:
    """The example inputs with every tensor cloned (as a leaf that requires grad where the
    original does): a forward that writes into its input (``x.sub_(self.mean)``) then
    changes prunekit's copy, never the caller's tensor."""
    return map_inputs(example_inputs, _leaf_copy)


def _leaf_copy(tensor: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        copy = tensor.clone()
    return copy.requires_grad_() if tensor.requires_grad and copy.is_floating_point() else copy


def grad_mode(example_inputs: Any, modules: Iterable[nn.Module] = ()
              ) -> contextlib.AbstractContextManager[Any]:
    """``torch.no_grad()`` for prunekit's own forwards, or ``torch.enable_grad()`` where an
    example input requires grad (the forward differentiates by it: a physics-informed
    network's ``torch.autograd.grad(u, x)``) or the code of one of ``modules`` (the model's)
    calls ``torch.autograd.grad``, ``.backward()`` or ``.requires_grad_()`` (SIREN makes its
    own leaf: ``coords.clone().detach().requires_grad_(True)``)."""
    from prunekit.graph.numbers import differentiates  # (graph imports this module)

    if any(t.requires_grad for _, t in walk_tensors(example_inputs, "input")) or \
            any(differentiates(cls) for cls in {type(module) for module in modules}):
        return torch.enable_grad()
    return torch.no_grad()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def walk_tensors(tree: Any, prefix: str = "output") -> Iterator[tuple[str, torch.Tensor]]:
    """(path, tensor) for every tensor in nested tuples/lists/dicts/dataclasses and
    ``torch.distributions`` objects (a policy's ``Categorical(logits=...)``: its ``logits``;
    a transformed distribution's base and transforms), each container once.

    Other objects are not looked into: a Hugging Face cache of keys and values is no output
    whose shape must be kept."""
    yield from _walk(tree, prefix, set())


def _walk(tree: Any, prefix: str, seen: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, (str, bytes, int, float, bool, type(None))) or id(tree) in seen:
        return
    elif isinstance(tree, Mapping):
        seen.add(id(tree))
        for key, value in tree.items():
            yield from _walk(value, f"{prefix}[{key!r}]", seen)
    elif isinstance(tree, (tuple, list)):
        seen.add(id(tree))
        for i, value in enumerate(tree):
            yield from _walk(value, f"{prefix}[{i}]", seen)
    elif is_dataclass(tree) and not isinstance(tree, type):
        seen.add(id(tree))
        for key in tree.__dataclass_fields__:
            yield from _walk(getattr(tree, key), f"{prefix}.{key}", seen)
    elif isinstance(tree, _DISTRIBUTIONS):
        seen.add(id(tree))
        for key, value in list(vars(tree).items()):
            yield from _walk(value, f"{prefix}.{key}", seen)


_DISTRIBUTIONS = (torch.distributions.Distribution, torch.distributions.transforms.Transform)
