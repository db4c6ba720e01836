"""``prune_checkpoint``: prune a Hugging Face causal LM larger than RAM, one block at a time.

The model is built with its parameters on the meta device (buffers such as rotary
frequencies are computed for real: they are small and often absent from the checkpoint).
The input embeddings are read from the safetensors shards to compute block 0's inputs from
the calibration ids, and released. Then each block in turn is read by tensor name, pruned
by ``prune_blocks`` (the machinery of ``prune_llm``: same solvers, stages, OWL,
reconstruction), written to its own output shard, run to make the next block's inputs,
and released back to meta. Tensors outside the blocks (embeddings, final norm, LM head)
are copied byte for byte. The output is written into a temporary sibling directory and
renamed into place, so a failure leaves no half-written ``out_dir``.

Peak memory (beyond the interpreter and libraries) is about
``max(B + S, E) + (2 + R) * A`` where ``B`` is one block's weights (with its keep-masks,
one byte per weight, while it is pruned), ``S`` the solver statistics of one stage
(Wanda: a vector per layer; SparseGPT: an in×in float32 Hessian per layer of the stage),
``E`` the input-embedding tensors, and ``A = nsamples × seqlen × hidden × dtype bytes``
one set of calibration activations (inputs and outputs of the current block alive at
once; ``R = 1`` more with ``reconstruct``). Nothing scales with the number of blocks.
Measured with Wanda and ``MALLOC_MMAP_THRESHOLD_=1048576``: about 2.3 blocks over the RSS
after imports (51 MB blocks, tests/llm/test_streaming.py, which bounds it at 3; 2.0x
of 196 MB blocks, over a higher baseline, in benchmarks/llm_streaming.py): a block above the
formula, which leaves out transient copies. Without that setting glibc's heap
fragments when tensors are a few MB and adds about 1-4 blocks, varying run to run;
freed pages are handed back after each block.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError, require
from prunekit.io.atomic import AtomicDirectory
from prunekit.llm.api import (
    LLMPruneResult,
    Method,
    as_batches,
    check_blocks,
    prune_blocks,
    record_layers,
    resolve_options,
)
from prunekit.llm.blocks import BlockInput, capture_block_inputs, find_blocks
from prunekit.llm.owl import OWLConfig
from prunekit.llm.reconstruct import ReconstructConfig
from prunekit.llm.sequential import Layers
from prunekit.llm.shards import (
    TensorEntry,
    load_tensors,
    read_checkpoint,
    shard_name,
    tensor_bytes,
    write_index,
    write_shard,
)
from prunekit.sparse.masks import remove_mask

# weight files of other formats are not copied: they would describe the dense model
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".gguf")


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create modules with every parameter on the meta device and buffers as usual.

    ``torch.device('meta')`` would also put buffers there, and those a checkpoint does not
    hold (rotary ``inv_freq``) could then not be recovered. ``nn.Module.register_parameter``
    is patched for the duration and restored on exit.
    """
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def release(module: nn.Module) -> None:
    """Drop ``module``'s parameter storage (back to meta) and any masks; buffers stay."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            remove_mask(layer, "weight", bake=False)
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and not param.is_meta:
                sub._parameters[name] = nn.Parameter(
                    torch.empty_like(param, device="meta"), requires_grad=param.requires_grad
                )


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def return_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    Tensors of a few MB come from the heap once glibc's dynamic mmap threshold has risen,
    and a block's worth of them freed in a different order than allocated leaves the heap
    fragmented: without this, resident memory can creep up by tens of MB per block (8 blocks
    of 51 MB, plain malloc, two runs each: 3.9-6.1 blocks of growth with it, 2.5-12.6
    without).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _load(module: nn.Module, prefix: str, entries: dict[str, TensorEntry]) -> None:
    keys = list(module.state_dict())
    tensors = load_tensors(entries[prefix + k] for k in keys)
    module.load_state_dict({k: tensors[prefix + k] for k in keys}, assign=True)


def _has_meta(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_meta
    if isinstance(value, (tuple, list)):
        return any(_has_meta(v) for v in value)
    if isinstance(value, dict):
        return any(_has_meta(v) for v in value.values())
    return False


def _check_dirs(src: Path, out: Path, overwrite: bool) -> None:
    if not src.is_dir():
        raise ConfigError(
            f"src_dir={str(src)!r} is not a directory; pass a Hugging Face checkpoint "
            "directory (config.json + *.safetensors), e.g. one written by save_pretrained"
        )
    if not (src / "config.json").is_file():
        raise ConfigError(
            f"src_dir={str(src)!r} has no config.json; pass the directory save_pretrained wrote"
        )
    if out.resolve() == src.resolve():
        raise ConfigError(f"out_dir={str(out)!r} is src_dir; write the pruned model elsewhere")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir={str(out)!r} is a file; pass a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"out_dir={str(out)!r} exists and is not empty; pass overwrite=True to replace it "
            "or choose a new directory"
        )


class _Layout:
    """Which checkpoint tensors belong to which block, and the output shard of each."""

    def __init__(
        self, path: str, block_list: nn.ModuleList, entries: dict[str, TensorEntry]
    ) -> None:
        self.path = path
        self.prefixes = [f"{path}.{i}." for i in range(len(block_list))]
        self.block_keys = [
            [p + k for k in block.state_dict()]
            for p, block in zip(self.prefixes, block_list, strict=True)
        ]
        missing = [k for keys in self.block_keys for k in keys if k not in entries]
        if missing:
            raise ConfigError(
                f"the checkpoint lacks {len(missing)} tensors of the model's blocks, e.g. "
                f"{missing[:3]}; its names must match the model built from config.json "
                "(re-save it with save_pretrained)"
            )
        in_blocks = {k for keys in self.block_keys for k in keys}
        rest = [e for name, e in entries.items() if name not in in_blocks]
        limit = max(tensor_bytes(entries[k] for k in keys) for keys in self.block_keys)
        self.rest_groups: list[list[TensorEntry]] = []
        for entry in rest:  # non-block tensors in shards of about one block's size
            group = self.rest_groups[-1] if self.rest_groups else None
            if group is None or tensor_bytes(group) + entry.nbytes > limit:
                self.rest_groups.append([entry])
            else:
                group.append(entry)
        self.total = len(self.rest_groups) + len(block_list)

    def block_shard(self, index: int) -> str:
        return shard_name(len(self.rest_groups) + index + 1, self.total)


def prune_checkpoint(
    src_dir: str | Path,
    out_dir: str | Path,
    calib: torch.Tensor | Sequence[torch.Tensor],
    *,
    method: Method | str = "wanda",
    sparsity: float = 0.5,
    pattern: str = "unstructured",
    owl: bool | OWLConfig = False,
    true_sequential: bool = True,
    blocks: str | None = None,
    reconstruct: bool | ReconstructConfig = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> LLMPruneResult:
    """Prune the causal LM saved in ``src_dir`` into ``out_dir`` without loading it whole.

    Same options and result as ``prune_llm`` (``calib``: token ids (nsamples, seqlen) or a
    list of (1, seqlen) tensors); the weights written equal what ``prune_llm`` computes on
    the loaded model, with the masks baked in (pruned entries stored as zeros).
    ``out_dir`` gets sharded safetensors (one shard per block), ``model.safetensors.index.json``
    and src_dir's other files (config, tokenizer); ``AutoModelForCausalLM.from_pretrained``
    loads it. ``progress(done, total)`` is called after each block is written.
    """
    start = time.perf_counter()
    opts = resolve_options(method, sparsity, pattern, owl, true_sequential, reconstruct)
    src, out = Path(src_dir), Path(out_dir)
    _check_dirs(src, out, overwrite)
    entries = read_checkpoint(src)
    batches = as_batches(calib)
    try:
        import transformers
    except ImportError:
        require("transformers", "hf")
    config = transformers.AutoConfig.from_pretrained(src)
    with parameters_on_meta():
        model = transformers.AutoModelForCausalLM.from_config(config)
    model.eval()
    path, block_list = find_blocks(model, blocks)
    layers = check_blocks(path, block_list, opts)
    layout = _Layout(path, block_list, entries)
    result = LLMPruneResult(opts.method, pattern, opts.sparsity, [])
    capture = _capture(model, block_list, batches, entries, set(layout.prefixes))

    with AtomicDirectory(out) as tmp:
        weight_map: dict[str, str] = {}

        @contextlib.contextmanager
        def stats_turn(index: int, block: nn.Module) -> Iterator[None]:
            _load(block, layout.prefixes[index], entries)
            try:
                yield
            finally:
                release(block)
                return_free_memory()

        @contextlib.contextmanager
        def prune_turn(index: int, block: nn.Module) -> Iterator[None]:
            with stats_turn(index, block):  # loaded, pruned, then written before release
                yield
                _write_block(tmp, layout, index, block, layers[index], result, weight_map)
            if progress is not None:
                progress(index + 1, len(block_list))

        result.block_sparsity = prune_blocks(
            capture, block_list, opts, around=prune_turn, around_stats=stats_turn
        )
        for i, group in enumerate(layout.rest_groups):
            name = shard_name(i + 1, layout.total)
            write_shard(tmp / name, {e.name: e for e in group})
            weight_map.update(dict.fromkeys((e.name for e in group), name))
        write_index(tmp, weight_map, tensor_bytes(entries.values()))
        for file in src.iterdir():
            if file.is_file() and not file.name.endswith((*_WEIGHT_SUFFIXES, ".index.json")):
                shutil.copy2(file, tmp / file.name)
    result.seconds = time.perf_counter() - start
    return result


def _write_block(
    tmp: Path,
    layout: _Layout,
    index: int,
    block: nn.Module,
    layers: Layers,
    result: LLMPruneResult,
    weight_map: dict[str, str],
) -> None:
    record_layers(result, layout.path, index, layers)
    for layer in layers.values():
        remove_mask(layer, "weight", bake=True)
    name = layout.block_shard(index)
    prefix = layout.prefixes[index]
    tensors = {prefix + k: v for k, v in block.state_dict().items()}
    write_shard(tmp / name, tensors)
    weight_map.update(dict.fromkeys(tensors, name))


def _capture(
    model: nn.Module,
    block_list: nn.ModuleList,
    batches: list[torch.Tensor],
    entries: dict[str, TensorEntry],
    block_prefixes: set[str],
) -> Callable[[], list[BlockInput]]:
    """A function giving block 0's inputs: it reads the tensors outside the blocks (but the
    LM head's), runs the model up to block 0, and releases them again."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    head_names = {f"{n}." for n, m in model.named_modules() if head is not None and m is head}
    needed = [
        k
        for k in model.state_dict()
        if k in entries
        and not any(k.startswith(p) for p in block_prefixes)
        and not any(k.startswith(h) for h in head_names)
    ]

    def capture() -> list[BlockInput]:
        tensors = load_tensors(entries[k] for k in needed)
        model.load_state_dict(tensors, strict=False, assign=True)
        del tensors
        try:
            if next(model.parameters()).is_meta:
                raise ConfigError(
                    f"{type(model).__name__}'s first parameter is not in the checkpoint, so "
                    "its device is unknown; streaming needs the input embeddings stored"
                )
            inputs = capture_block_inputs(model, block_list, batches)
        finally:
            release(model)  # the blocks are on meta already
        if any(_has_meta(item.args) or _has_meta(item.kwargs) for item in inputs):
            raise ConfigError(
                f"block 0 of {type(model).__name__} receives tensors computed from weights the "
                "checkpoint does not hold; streaming cannot run this model"
            )
        return inputs

    return capture


def synthetic_checkpoint(
    config: Any, directory: str | Path, *, dtype: torch.dtype = torch.float32, seed: int = 0
) -> int:
    """Write a random checkpoint for ``config`` (a transformers config) one block at a time,
    as ``save_pretrained`` lays it out (one shard per block); its size in bytes.

    For tests and benchmarks of the streaming path: memory stays about one block, so a
    checkpoint larger than RAM can be made. Matrices ~ N(0, 0.02²), 1-D tensors (norms, biases) 1.
    """
    try:
        import transformers
    except ImportError:
        require("transformers", "hf")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    path, block_list = find_blocks(model)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    tied = {k for k in shapes if k.endswith(".weight") and _is_tied(model, k)}
    prefixes = [f"{path}.{i}." for i in range(len(block_list))]
    rest = [k for k in shapes if k not in tied and not any(k.startswith(p) for p in prefixes)]
    groups = [rest] + [[k for k in shapes if k.startswith(p)] for p in prefixes]
    gen = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for i, names in enumerate(groups):
        tensors = {
            k: (
                torch.ones(shapes[k], dtype=dtype)
                if len(shapes[k]) == 1
                else (torch.randn(shapes[k], generator=gen) * 0.02).to(dtype)
            )
            for k in names
        }
        name = shard_name(i + 1, len(groups))
        write_shard(out / name, tensors)
        weight_map.update(dict.fromkeys(names, name))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    write_index(out, weight_map, total)
    return total


def _is_tied(model: nn.Module, key: str) -> bool:
    """``key`` is the output embedding's weight and shares its tensor with the input one."""
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    if not (callable(get_in) and callable(get_out)) or get_out() is None:
        return False
    names = {m: n for n, m in model.named_modules()}
    head = get_out()
    return bool(head.weight is get_in().weight and key == f"{names[head]}.weight")
