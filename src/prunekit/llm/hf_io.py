"""Load a Hugging Face model directory and write one back atomically, masks baked in.

``load_pretrained`` picks the causal-LM class when the config names one (``*ForCausalLM``,
``*LMHeadModel``), the bare ``AutoModel`` otherwise, and never reaches a hub: the
directory must hold ``config.json`` and its weights. ``save_pretrained`` writes
``save_pretrained``'s files (and the tokenizer's) into a temporary sibling and renames it
into place, so a failure never leaves a half-written model under the target name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.errors import ConfigError, require
from prunekit.io.atomic import AtomicDirectory, check_replaceable
from prunekit.sparse.masks import masked_tensors, strip

__all__ = ["load_pretrained", "load_tokenizer", "save_pretrained"]

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        require("transformers", "hf")
    return transformers


def load_pretrained(
    directory: str | os.PathLike[str], *, tokenizer: str | os.PathLike[str] | None = None
) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer or None) from a local ``save_pretrained`` directory.

    The tokenizer comes from ``tokenizer`` if given, else from ``directory`` when it holds
    one; without any, None is returned and the caller decides whether it needs one.
    """
    root = Path(directory)
    if not (root / "config.json").is_file():
        raise ConfigError(
            f"model directory {str(root)!r} has no config.json; pass the directory a Hugging "
            "Face save_pretrained() wrote (config.json + *.safetensors)"
        )
    tf = _transformers()
    config = tf.AutoConfig.from_pretrained(root, local_files_only=True)
    causal = any(name.endswith(_CAUSAL_SUFFIXES) for name in config.architectures or ())
    auto = tf.AutoModelForCausalLM if causal else tf.AutoModel
    model = auto.from_pretrained(root, local_files_only=True).eval()
    if tokenizer is not None:
        return model, load_tokenizer(tokenizer)
    has_tokenizer = any((root / name).is_file() for name in _TOKENIZER_FILES)
    return model, load_tokenizer(root) if has_tokenizer else None


def load_tokenizer(directory: str | os.PathLike[str]) -> Any:
    """The Hugging Face tokenizer saved in ``directory`` (offline)."""
    tf = _transformers()
    try:
        return tf.AutoTokenizer.from_pretrained(Path(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load a tokenizer from {str(directory)!r} ({exc}); pass a directory "
            "holding the model's tokenizer files (tokenizer.json / vocab.txt)"
        ) from exc


def save_pretrained(
    model: nn.Module, directory: str | os.PathLike[str], *, tokenizer: Any = None
) -> Path:
    """Write ``model.save_pretrained`` (+ ``tokenizer.save_pretrained``) to ``directory``
    atomically; masks are baked into the weights first (in place, as ``prunekit.strip``)."""
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(
            f"{type(model).__name__} has no save_pretrained(); save it with prunekit.save(model, "
            "dir) instead"
        )
    target = Path(directory)
    check_replaceable(target, "config.json", "Hugging Face model directory", "directory")
    if masked_tensors(model):
        strip(model)
    with AtomicDirectory(target) as tmp:
        model.save_pretrained(tmp)  # type: ignore[operator]
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return target
