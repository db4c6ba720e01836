"""Find a model's repeated blocks and capture what the model feeds the first one.

Works for any decoder/encoder built as a ``ModuleList`` of identical blocks (LLaMA's
``model.layers``, GPT-2's ``transformer.h``, BERT's ``encoder.layer``, a hand-written
GPT). The inputs of block 0 are caught with a forward pre-hook that records the
positional and keyword arguments exactly as the model passes them (attention masks,
position ids, rotary ``position_embeddings``) and then stops the forward pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError


@dataclass
class BlockInput:
    """One call of a block: ``block(*args, **kwargs)``; ``args[0]`` or ``kwargs['hidden_states']``
    is the hidden state that flows from block to block."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: torch.Tensor) -> BlockInput:
        if self.args:
            return BlockInput((hidden, *self.args[1:]), self.kwargs)
        return BlockInput((), {**self.kwargs, "hidden_states": hidden})


def hidden_of(output: Any) -> torch.Tensor:
    """A block returns the hidden state, or a tuple/list whose first item is it."""
    hidden = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(hidden, torch.Tensor):
        raise ConfigError(f"block returned {type(output).__name__}; expected a tensor or a tuple")
    return hidden


def block_outputs(block: nn.Module, inputs: Sequence[BlockInput]) -> list[torch.Tensor]:
    """The hidden state ``block`` returns for each captured input."""
    with torch.no_grad():
        return [hidden_of(block(*item.args, **item.kwargs)) for item in inputs]


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """(attribute path, ModuleList) of the model's repeated blocks.

    With ``path`` (e.g. ``"model.layers"``) that submodule is used; otherwise the
    ``ModuleList`` of same-type modules holding the most parameters is chosen.
    """
    if path is not None:
        try:
            found = model.get_submodule(path)
        except AttributeError as exc:
            raise ConfigError(
                f"blocks={path!r}: {type(model).__name__} has no submodule at that path; "
                "pass the dotted path of its ModuleList of layers, e.g. blocks='model.layers'"
            ) from exc
        if not isinstance(found, nn.ModuleList) or len(found) == 0:
            raise ConfigError(
                f"blocks={path!r} is a {type(found).__name__}, not a non-empty nn.ModuleList; "
                "point it at the list of repeated layers"
            )
        return path, found
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise ConfigError(
            f"blocks=None: found no nn.ModuleList of identical blocks in {type(model).__name__}; "
            "pass blocks='<dotted path to the layer list>', e.g. blocks='model.layers'"
        )
    return best[1], best[2]


class _StopForward(Exception):
    """Raised by the capture hook to end the forward pass once block 0's inputs are caught."""


def _model_kwargs(model: nn.Module) -> dict[str, Any]:
    """Ask models that keep a KV cache (Hugging Face ``use_cache``) not to build one."""
    params = inspect.signature(model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}


def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, batches: Sequence[torch.Tensor]
) -> list[BlockInput]:
    """Run ``model(batch)`` for each batch up to ``blocks[0]`` and return what it receives."""
    captured: list[BlockInput] = []

    def hook(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append(BlockInput(tuple(args), dict(kwargs)))
        raise _StopForward

    extra = _model_kwargs(model)
    device = next(model.parameters()).device
    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(batch.to(device), **extra)
                except _StopForward:
                    continue
                raise ConfigError(
                    f"model({tuple(batch.shape)}) finished without calling the first block "
                    f"({type(blocks[0]).__name__}); pass blocks='<path>' naming the layers it runs"
                )
    finally:
        handle.remove()
    return captured
