"""Turning CLI strings into models and example inputs: ``pkg.module:factory`` and ``1,3,32,32``."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError


def load_factory_model(spec: str) -> nn.Module:
    """Build a model from ``"package.module:factory"`` (factory called with no arguments)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"--model {spec!r} must look like 'package.module:factory', "
            "e.g. 'prunekit.zoo.lenet:lenet5'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"--model {spec!r}: cannot import module {module_name!r} ({exc}); "
            "check the spelling and that it is on PYTHONPATH"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"--model {spec!r}: {module_name!r} has no callable named {attr!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"--model {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,32,32"`` into a shape tuple of positive ints."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(
            f"--input-shape {text!r} must be comma-separated positive integers, e.g. 1,3,32,32"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(f"--input-shape {text!r}: every dimension must be a positive integer")
    return shape


def load_weights(model: nn.Module, path: str) -> None:
    """Load a safetensors file or a ``weights_only`` torch checkpoint into ``model``."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--weights {path!r} does not exist")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(file))
    else:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    model.load_state_dict(state)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every model-taking command shares: --model, --input-shape, --weights."""
    parser.add_argument("--model", required=True,
                        help="package.module:factory, e.g. prunekit.zoo:lenet5")
    parser.add_argument("--input-shape", required=True,
                        help="example input shape, e.g. 1,1,32,32")
    parser.add_argument("--weights", help="optional .safetensors (or weights-only .pt) state dict")


def model_from_args(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor]:
    """The model (eval mode, weights loaded) and a random example input of --input-shape."""
    model = load_factory_model(args.model).eval()
    if args.weights:
        load_weights(model, args.weights)
    return model, torch.randn(parse_shape(args.input_shape))
