"""Save and load a (pruned) model as a directory: safetensors weights + a JSON manifest.

Layout of a checkpoint directory::

    model.safetensors   every state_dict tensor, masks included (bool); tied tensors once
    prunekit.json       format version, versions, model class, masked tensors, aliases,
                        each module's state_dict version (``state_metadata``), the
                        structured pruning plan (if any; ``plans``, oldest first, for
                        a model pruned more than once) and the user's metadata

A sparse COO or CSR tensor of the model's own (a graph's normalised adjacency kept as a
buffer) is stored as its parts, ``<key>.__indices`` and ``<key>.__values`` (CSR:
``__crow_indices``, ``__col_indices``, ``__values``), its layout and shape in the manifest's
``"layouts"`` table (format version 3), and rebuilt by ``load``.

With ``save(..., sparse=True)`` a tensor that is smaller as bitmap + values
(``prunekit.sparse.storage``) is stored as ``<key>.__bitmap`` (uint8) and ``<key>.__values``
instead, its shape and dtype in the manifest's ``"sparse"`` table (format version 2). A masked
weight's ``original`` is stored under its mask's bitmap and the bool mask is not stored at
all: it *is* the bitmap. ``load`` decodes before anything else, so the rest is unchanged.

Nothing is ever unpickled: weights are safetensors, everything else is JSON, and a model's
code comes from the caller's ``base_model``. Saving is atomic: the directory is written
under a temporary sibling name, fsync'ed and renamed into place.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import os
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from prunekit import __version__
from prunekit.errors import ConfigError, PrunekitError
from prunekit.io.atomic import AtomicDirectory, check_replaceable
from prunekit.sparse.masks import WeightMask, apply_mask, get_mask, masked_tensors
from prunekit.sparse.storage import EncodedTensor, decode, encode, resolve_value_dtype

__all__ = ["FORMAT_VERSION", "LAYOUT_FORMAT_VERSION", "SPARSE_FORMAT_VERSION",
           "CheckpointError", "load", "load_manifest", "save"]

#: the version dense checkpoints are written with
FORMAT_VERSION = 1
#: the version ``save(..., sparse=True)`` writes when it encoded a tensor
SPARSE_FORMAT_VERSION = 2
#: the version written when the model holds a sparse COO/CSR tensor of its own (a graph's
#: adjacency buffer); the newest readable
LAYOUT_FORMAT_VERSION = 3
#: the parts a sparse tensor of the model is stored as, by layout (its shape in "layouts")
_LAYOUT_PARTS = {"sparse_coo": ("indices", "values"),
                 "sparse_csr": ("crow_indices", "col_indices", "values")}
BITMAP_SUFFIX = ".__bitmap"
VALUES_SUFFIX = ".__values"
FORMAT_NAME = "prunekit-checkpoint"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "prunekit.json"


class CheckpointError(PrunekitError, ValueError):
    """A checkpoint directory is malformed, too new, or cannot be restored here."""


def save(
    obj: Any,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    sparse: bool = False,
    value_dtype: str | torch.dtype | None = None,
) -> Path:
    """Save a model, or a pruning result (anything with ``.model`` and optional ``.plan``).

    ``metadata`` is any JSON-serialisable mapping stored verbatim in ``prunekit.json``.
    ``sparse=True`` stores each tensor that is smaller that way (at its own dtype) as
    bitmap + values (see the module docstring); ``load`` restores it bit-exactly — except
    that the pruned entries of a masked weight's ``original`` (never visible in the weight
    or the outputs) come back as zeros. ``value_dtype`` ("float16"/"bfloat16", with
    ``sparse=True`` only) halves the bytes of those encoded values, lossily; tensors stored
    dense keep their dtype. An existing checkpoint at ``path`` is replaced atomically; an
    existing non-empty directory that is not a prunekit checkpoint is never touched.
    Returns the directory.
    """
    if not isinstance(sparse, bool):
        raise TypeError(f"sparse must be True or False, got {type(sparse).__name__} {sparse!r}")
    values_as = resolve_value_dtype(value_dtype)
    if values_as is not None and not sparse:
        raise ConfigError(
            f"value_dtype={value_dtype!r} applies only to the sparse encoding; "
            "pass sparse=True as well, or drop value_dtype"
        )
    model, plan = _model_and_plan(obj)
    target = Path(path)
    check_replaceable(target, MANIFEST_FILE, "prunekit checkpoint")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(
            f"metadata must be a dict of JSON-serialisable values, got {type(metadata).__name__}"
        )
    from prunekit.structured.plan import plans_of  # (structured sits above io: on use)

    # every plan that made the model (a model pruned twice: both), else the result's own
    plans = plans_of(model) or ([plan] if plan is not None else [])
    manifest_extra = {
        "plan": _json_or_error("plan", plans[0] if len(plans) == 1 else None),
        **({"plans": _json_or_error("plans", plans)} if len(plans) > 1 else {}),
        "metadata": _json_or_error("metadata", dict(metadata or {})),
    }

    state = model.state_dict()
    converted = {name for name, module in model.named_modules()
                 if type(module).__module__.startswith("prunekit.sparse")}
    tensors, aliases, layouts = _dedupe(state, converted)
    masks = masked_tensors(model)
    encoded = _encode_sparse(model, tensors, sorted(masks), values_as) if sparse else {}
    manifest = {
        "format": FORMAT_NAME,
        "format_version": LAYOUT_FORMAT_VERSION if layouts else
        SPARSE_FORMAT_VERSION if encoded else FORMAT_VERSION,
        "prunekit_version": __version__,
        "torch_version": torch.__version__,
        "model_class": _class_name(model),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "masked": {name: _mask_key(model, name) for name in sorted(masks)},
        "aliases": aliases,
        "state_metadata": _state_metadata(state),
        **({"sparse": encoded} if encoded else {}),
        **({"layouts": layouts} if layouts else {}),
        **manifest_extra,
    }
    with AtomicDirectory(target) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return target


def load(
    path: str | os.PathLike[str], base_model: nn.Module | None = None, *, replay: bool = True
) -> nn.Module:
    """Restore a checkpoint into ``base_model`` (built by the caller) and return the model.

    If the checkpoint holds a structured pruning plan and ``replay`` is true, the plan is
    replayed on ``base_model`` first (``prunekit.structured.replay_plan``) so its shapes
    match; pass ``replay=False`` when ``base_model`` already has the pruned shapes. Masks
    are re-attached, then the state is loaded with ``strict=True``. Keys and shapes are
    checked after the replay and before any mask or weight is touched, so a mismatch leaves
    the (replayed) ``base_model`` as it was.
    The returned model is ``base_model`` itself unless the plan's replay returns a new one.
    """
    directory = Path(path)
    manifest = load_manifest(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(directory)!r} has no {WEIGHTS_FILE}; the directory is incomplete "
            "— save the model again"
        )
    if base_model is None:
        raise ConfigError(
            f"base_model is None; a checkpoint holds weights, not code — pass a freshly built "
            f"{manifest['model_class']} with the constructor arguments used before saving, "
            "e.g. load(path, MyNet(num_classes=10))"
        )
    if not isinstance(base_model, nn.Module):
        raise TypeError(
            f"base_model must be a torch.nn.Module, got {type(base_model).__name__}; "
            f"pass a freshly built {manifest['model_class']}"
        )

    if not torch.is_inference_mode_enabled() and any(
            t.is_inference() for t in (*base_model.parameters(), *base_model.buffers())):
        raise ConfigError(
            "base_model was built under torch.inference_mode(): its tensors are inference "
            "tensors, which nothing outside inference_mode may write into, so the weights "
            "cannot be loaded; build base_model outside inference_mode, or call load inside "
            "`with torch.inference_mode():`")
    state = load_file(str(weights), device="cpu")
    _decode_sparse(state, manifest.get("sparse", {}), str(directory))
    _rebuild_layouts(state, manifest.get("layouts", {}), str(directory))
    for alias, canonical in manifest["aliases"].items():
        if canonical not in state:
            raise CheckpointError(
                f"{WEIGHTS_FILE} in {str(directory)!r} lacks {canonical!r}, which "
                f"{alias!r} aliases; the checkpoint is damaged — save the model again"
            )
        state[alias] = state[canonical]
    model = base_model
    plans = manifest.get("plans") or ([manifest["plan"]] if manifest.get("plan") else [])
    if plans and replay:
        for plan in plans:  # oldest first: each was made on the model the one before gave
            model = _replay_plan(model, plan)
    masked: dict[str, str] = manifest["masked"]
    hooked = _torch_pruned(model, state)
    _check_compatible(model, state, masked, str(manifest["model_class"]), hooked)

    for name, mask_key in masked.items():
        module_name, _, tensor_name = name.rpartition(".")
        apply_mask(model.get_submodule(module_name), tensor_name, state[mask_key])
    for name in hooked:  # load_state_dict fills <name>_orig and <name>_mask
        module_name, _, tensor_name = name.rpartition(".")
        torch_prune.identity(model.get_submodule(module_name), tensor_name)
    for key in manifest.get("layouts", {}):  # a sparse buffer: taken as stored (copy_
        # into a CSR buffer needs as many entries as it already holds)
        owner, _, name = key.rpartition(".")
        module = model.get_submodule(owner)
        if name in module._buffers:
            module._buffers[name] = state[key]
    model.load_state_dict(_with_metadata(state, manifest.get("state_metadata")), strict=True)
    if plans:
        from prunekit.structured.plan import record_plans

        record_plans(model, plans)  # a later prune and save adds to them
    return model


def load_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``prunekit.json`` of a checkpoint directory (no weights are read)."""
    directory = Path(path)
    if not directory.is_dir():
        hint = ""
        backups = sorted(directory.parent.glob(f".{directory.name}.old-*"))
        if backups:
            hint = f"; an interrupted save left the previous checkpoint at {str(backups[-1])!r}"
        raise FileNotFoundError(
            f"checkpoint directory {str(directory)!r} does not exist{hint}; "
            "pass the directory given to prunekit.save"
        )
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{str(directory)!r} has no {MANIFEST_FILE}, so it is not a prunekit checkpoint; "
            "pass a directory written by prunekit.save"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{str(manifest_path)!r} is not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{str(manifest_path)!r} is not a prunekit checkpoint manifest "
            f"(expected \"format\": {FORMAT_NAME!r})"
        )
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{str(manifest_path)!r} has an invalid format_version {version!r}")
    if version > LAYOUT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(directory)!r} uses format_version {version} (written by prunekit "
            f"{manifest.get('prunekit_version')}), but this prunekit {__version__} reads up to "
            f"version {LAYOUT_FORMAT_VERSION}; upgrade prunekit: pip install -U prunekit"
        )
    for key in ("masked", "aliases"):
        table = manifest.get(key)
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in table.items()
        ):
            raise CheckpointError(
                f"{str(manifest_path)!r} field {key!r} must map tensor names to tensor names, "
                f"got {table!r}; the manifest is damaged — save the model again"
            )
    _check_sparse_table(manifest.get("sparse", {}), str(manifest_path))
    plans = manifest.get("plans", [])
    if not isinstance(plans, list) or not all(isinstance(p, dict) for p in plans):
        raise CheckpointError(
            f"{str(manifest_path)!r} field 'plans' must be a list of plans, got {plans!r}; "
            "the manifest is damaged — save the model again"
        )
    metadata = manifest.get("state_metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in metadata.items()
    ):
        raise CheckpointError(
            f"{str(manifest_path)!r} field 'state_metadata' must map module names to dicts, "
            f"got {metadata!r}; the manifest is damaged — save the model again"
        )
    if not isinstance(manifest.get("model_class"), str):
        raise CheckpointError(
            f"{str(manifest_path)!r} field 'model_class' must be a string, "
            f"got {manifest.get('model_class')!r}; the manifest is damaged — save the model again"
        )
    return manifest


# --- saving -------------------------------------------------------------------------------


def _model_and_plan(obj: Any) -> tuple[nn.Module, Any]:
    if isinstance(obj, nn.Module):
        return obj, None
    model = getattr(obj, "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"obj must be a torch.nn.Module or a pruning result with a .model attribute, "
            f"got {type(obj).__name__}; pass the model or the result of prunekit.prune"
        )
    plan = getattr(obj, "plan", None)
    if plan is not None and callable(getattr(plan, "to_dict", None)):
        plan = plan.to_dict()
    elif dataclasses.is_dataclass(plan) and not isinstance(plan, type):
        plan = dataclasses.asdict(plan)
    return model, plan


def _state_metadata(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each module's ``state_dict`` metadata (its ``_version``), the part JSON can hold.

    ``load_state_dict`` hands it to every module's ``_load_from_state_dict``; some refuse a
    state without it (torchvision's MNASNet raises on a missing version)."""
    metadata = getattr(state, "_metadata", None) or {}
    kept: dict[str, dict[str, Any]] = {}
    for prefix, local in metadata.items():
        entries = {k: v for k, v in dict(local).items()
                   if isinstance(k, str) and isinstance(v, (int, float, str, bool))}
        kept[str(prefix)] = entries
    return kept


def _with_metadata(state: dict[str, torch.Tensor],
                   metadata: Mapping[str, Any] | None) -> Mapping[str, torch.Tensor]:
    """``state`` carrying the saved modules' metadata as ``state_dict()`` would (checkpoints
    written before prunekit stored it load without, as they did)."""
    if not metadata:
        return state
    ordered: Any = collections.OrderedDict(state)
    ordered._metadata = collections.OrderedDict((k, dict(v)) for k, v in metadata.items())
    return ordered


def _json_or_error(name: str, value: Any) -> Any:
    """``value`` as it will read back from JSON; a ConfigError if JSON cannot hold it."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{name} must be JSON-serialisable (dicts, lists, strings, finite numbers, "
            f"booleans, None): {err}; convert it to plain data before saving"
        ) from err


def _dedupe(state: Mapping[str, Any], converted: AbstractSet[str] = frozenset()
            ) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, dict[str, Any]]]:
    """Tensors to store (contiguous, CPU, no shared storage), alias → stored name, and the
    layout table of sparse COO/CSR tensors (stored as their parts) — not of the modules
    ``converted`` by prunekit.sparse.convert, which load into no dense model.

    Entries that are the same view of the same storage (tied weights) are stored once;
    other storage sharing (overlapping slices) is broken by copying.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    layouts: dict[str, dict[str, Any]] = {}
    seen_views: dict[tuple[Any, ...], str] = {}
    seen_storages: set[tuple[str, int]] = set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; prunekit "
                "checkpoints hold tensors only (get_extra_state is not supported)"
            )
        tensor = value.detach()
        layout = str(tensor.layout).removeprefix("torch.")
        if layout in _LAYOUT_PARTS and type(tensor) is torch.Tensor and \
                key.rpartition(".")[0] not in converted:
            layouts[key] = {"layout": layout, "shape": list(tensor.shape)}
            for part, values in zip(_LAYOUT_PARTS[layout], _layout_parts(tensor), strict=True):
                tensors[f"{key}.__{part}"] = values.to("cpu").contiguous()
            continue
        if tensor.layout != torch.strided or type(tensor) is not torch.Tensor:
            raise CheckpointError(
                f"state_dict entry {key!r} is a {type(tensor).__name__} with layout "
                f"{tensor.layout}, which safetensors cannot hold (a model converted by "
                "prunekit.sparse.convert or to_semi_structured?); save the masked model "
                "instead, or call prunekit.sparse.convert.to_dense(model) first; a sparse "
                "tensor of your own is stored in the COO or CSR layout: convert it with "
                ".to_sparse() or .to_sparse_csr()"
            )
        if tensor.numel() > 0:
            storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
            view = (*storage, tensor.storage_offset(), tuple(tensor.shape),
                    tuple(tensor.stride()), tensor.dtype)
            if view in seen_views:
                aliases[key] = seen_views[view]
                continue
            seen_views[view] = key
            if storage in seen_storages:
                tensor = tensor.clone()
            seen_storages.add(storage)
        tensors[key] = tensor.to("cpu").contiguous()
    return tensors, aliases, layouts


def _layout_parts(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if tensor.layout == torch.sparse_coo:
        tensor = tensor.coalesce()
        return tensor.indices(), tensor.values()
    return tensor.crow_indices(), tensor.col_indices(), tensor.values()


def _rebuild_layouts(state: dict[str, torch.Tensor], table: Any, directory: str) -> None:
    """Put each sparse tensor the ``"layouts"`` table lists back together from its parts."""
    if not isinstance(table, dict):
        raise CheckpointError(f"the \"layouts\" table in {directory!r} must be a dict, got "
                              f"{type(table).__name__}; the manifest is damaged — save the "
                              f"model again")
    for key, entry in table.items():
        layout = entry.get("layout") if isinstance(entry, dict) else None
        parts = _LAYOUT_PARTS.get(layout) if isinstance(layout, str) else None
        names = [f"{key}.__{part}" for part in parts or ()]
        if parts is None or not all(name in state for name in names):
            raise CheckpointError(
                f"sparse tensor {key!r} in {directory!r} has an unknown layout or lacks its "
                f"parts ({entry!r}); the checkpoint is damaged — save the model again")
        pieces = [state.pop(name) for name in names]
        shape = [int(size) for size in entry["shape"]]
        if layout == "sparse_coo":
            state[key] = torch.sparse_coo_tensor(pieces[0], pieces[1], shape).coalesce()
        else:
            state[key] = torch.sparse_csr_tensor(pieces[0], pieces[1], pieces[2], shape)


def _encode_sparse(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    masked: list[str],
    value_dtype: torch.dtype | None,
) -> dict[str, dict[str, Any]]:
    """Replace, in ``tensors``, each tensor that is smaller encoded by its bitmap and values;
    return the manifest's ``"sparse"`` table (stored key → shape, dtype, mask key)."""
    under_mask = _sole_mask_originals(model, masked, tensors)
    table: dict[str, dict[str, Any]] = {}
    for key in list(tensors):
        if key not in tensors or key in under_mask.values():
            continue  # a mask: stored as its original's bitmap (or dense beside a dense one)
        tensor = tensors[key]
        if tensor.numel() == 0 or tensor.is_complex():
            continue
        if f"{key}{BITMAP_SUFFIX}" in tensors or f"{key}{VALUES_SUFFIX}" in tensors:
            continue  # a user key already uses our suffix: keep this one dense
        mask_key = under_mask.get(key)
        keep = tensors[mask_key] if mask_key is not None else None
        enc = encode(tensor, keep=keep)
        dense_bytes = tensor.numel() * tensor.element_size()
        if mask_key is not None:
            dense_bytes += tensors[mask_key].numel()
        if enc.nbytes >= dense_bytes:
            continue  # judged at the tensor's own dtype: value_dtype never encodes a dense one
        if value_dtype is not None:
            enc = encode(tensor, keep=keep, value_dtype=value_dtype)
        del tensors[key]
        if mask_key is not None:
            del tensors[mask_key]
        tensors[f"{key}{BITMAP_SUFFIX}"] = enc.bitmap
        tensors[f"{key}{VALUES_SUFFIX}"] = enc.values.contiguous()
        table[key] = {
            "shape": list(enc.shape),
            "dtype": str(enc.dtype).removeprefix("torch."),
            "mask": mask_key,
        }
    return table


def _sole_mask_originals(
    model: nn.Module, masked: list[str], tensors: Mapping[str, torch.Tensor]
) -> dict[str, str]:
    """``original`` key → mask key for masked tensors whose only parametrization is the mask
    (then ``original * mask`` is the weight, and storing ``original`` under the mask is exact
    for the model)."""
    out: dict[str, str] = {}
    for name in masked:
        module_name, _, tensor_name = name.rpartition(".")
        plist = model.get_submodule(module_name).parametrizations[tensor_name]  # type: ignore[index]
        if len(plist) != 1:
            continue
        prefix = f"{module_name}." if module_name else ""
        original = f"{prefix}parametrizations.{tensor_name}.original"
        mask_key = _mask_key(model, name)
        if original in tensors and mask_key in tensors:
            out[original] = mask_key
    return out


def _mask_key(model: nn.Module, name: str) -> str:
    """The state_dict key of the mask buffer on tensor ``name`` (e.g. ``fc.weight``)."""
    module_name, _, tensor_name = name.rpartition(".")
    module = model.get_submodule(module_name)
    plist = module.parametrizations[tensor_name]  # type: ignore[index]
    index = next(i for i, p in enumerate(plist) if isinstance(p, WeightMask))
    prefix = f"{module_name}." if module_name else ""
    return f"{prefix}parametrizations.{tensor_name}.{index}.mask"


def _class_name(model: nn.Module) -> str:
    cls = type(model)
    if parametrize.is_parametrized(model):  # the root itself was masked: name the base class
        cls = cls.__bases__[0]
    return f"{cls.__module__}.{cls.__qualname__}"


# --- loading ------------------------------------------------------------------------------


def _replay_plan(model: nn.Module, plan: Any) -> nn.Module:
    # imported on use: structured pruning sits above io in the layering
    from prunekit.structured import replay_plan
    from prunekit.structured.plan import WrapperMismatchError

    try:
        replay_plan(model, plan)
    except WrapperMismatchError:
        raise  # (its own fix: the model and the plan differ by a wrapper)
    except ConfigError as err:
        raise ConfigError(
            f"{err}; if base_model already has the pruned shapes (it was pruned, or loaded, "
            f"before), pass replay=False"
        ) from err
    return model


def _decode_sparse(
    state: dict[str, torch.Tensor], table: Mapping[str, Any], directory: str
) -> None:
    """Turn each bitmap + values pair listed in ``table`` back into its tensor (and mask)."""
    for key, entry in table.items():
        try:
            bitmap = state.pop(f"{key}{BITMAP_SUFFIX}")
            values = state.pop(f"{key}{VALUES_SUFFIX}")
        except KeyError as err:
            raise CheckpointError(
                f"{WEIGHTS_FILE} in {directory!r} lacks {err.args[0]!r}, which the manifest's "
                "sparse table lists; the checkpoint is damaged — save the model again"
            ) from err
        dtype = getattr(torch, entry["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(
                f"sparse entry {key!r} in {directory!r} has unknown dtype {entry['dtype']!r}; "
                "the manifest is damaged — save the model again"
            )
        try:
            tensor = decode(EncodedTensor(bitmap, values, tuple(entry["shape"]), dtype))
        except ConfigError as err:
            raise CheckpointError(f"sparse entry {key!r} in {directory!r}: {err}") from err
        state[key] = tensor
        if entry.get("mask") is not None:
            state[entry["mask"]] = decode(
                EncodedTensor(bitmap, torch.ones(values.numel(), dtype=torch.bool),
                              tensor.shape, torch.bool)
            )


def _check_sparse_table(table: Any, where: str) -> None:
    def valid(entry: Any) -> bool:
        return (
            isinstance(entry, dict)
            and isinstance(entry.get("shape"), list)
            and all(isinstance(n, int) and n >= 0 for n in entry["shape"])
            and isinstance(entry.get("dtype"), str)
            and (entry.get("mask") is None or isinstance(entry.get("mask"), str))
        )

    if not isinstance(table, dict) or not all(
        isinstance(k, str) and valid(v) for k, v in table.items()
    ):
        raise CheckpointError(
            f"{where!r} field 'sparse' must map tensor names to {{shape, dtype, mask}}, "
            f"got {table!r}; the manifest is damaged — save the model again"
        )


def _torch_pruned(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Tensors that ``torch.nn.utils.prune`` masked in the saved model (the checkpoint holds
    ``<name>_orig`` and ``<name>_mask`` where ``base_model``, built afresh, holds ``name``):
    ``load`` re-attaches a mask hook there, so the loaded model computes the masked weight
    and keeps its zeros through training as the saved one did."""
    held = model.state_dict()
    names = [key.removesuffix("_orig") for key in state if key.endswith("_orig")]
    return [name for name in names if f"{name}_orig" not in held and name in held
            and f"{name}_mask" in state and name not in state]


def _check_compatible(
    model: nn.Module, state: Mapping[str, torch.Tensor], masked: Mapping[str, str],
    model_class: str, hooked: Iterable[str] = (),
) -> None:
    """Check keys and shapes as they will be once masks are attached, changing nothing."""
    fix = f"build base_model ({model_class}) with the same constructor arguments as when saved"
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    for name in hooked:  # torch.nn.utils.prune's masks, re-attached by load
        shape = expected.pop(name)
        expected[f"{name}_orig"] = expected[f"{name}_mask"] = shape
    for name, mask_key in masked.items():
        module_name, _, tensor_name = name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError as err:
            raise ConfigError(
                f"the checkpoint masks {name!r} but base_model has no module {module_name!r}; "
                f"{fix}"
            ) from err
        if not hasattr(module, tensor_name):
            raise ConfigError(
                f"the checkpoint masks {name!r} but base_model.{module_name} has no "
                f"{tensor_name!r}; {fix}"
            )
        if get_mask(module, tensor_name) is not None:
            continue  # base_model is already masked there: keys exist
        shape = tuple(getattr(module, tensor_name).shape)
        if not parametrize.is_parametrized(module, tensor_name):
            expected.pop(name, None)
            prefix = f"{module_name}." if module_name else ""
            expected[f"{prefix}parametrizations.{tensor_name}.original"] = shape
        expected[mask_key] = shape

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        hint = ""
        if any(".parametrizations." in key for key in missing):
            hint = " (base_model carries masks the checkpoint lacks: pass an unmasked model)"
        raise ConfigError(
            f"base_model does not match the checkpoint: missing in the checkpoint "
            f"{_preview(missing)}, not in base_model {_preview(unexpected)}{hint}; {fix}"
        )
    for key, shape in expected.items():
        saved = tuple(state[key].shape)
        if saved != shape:
            raise ConfigError(
                f"tensor {key!r} has shape {saved} in the checkpoint but {shape} in base_model; "
                f"{fix} (and, for a structurally pruned model, replay its plan)"
            )


def _preview(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")

