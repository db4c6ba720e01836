"""``prune_hf``: remove attention heads and FFN neurons from a Hugging Face model and
update its config, so that ``save_pretrained`` → ``from_pretrained`` gives the same model.

Built on :func:`prunekit.structured.prune`: only the head groups (query heads with their
key/value group under GQA; GPT-2's heads through its fused ``c_attn``, q/k/v slices and
``split_size``/``num_heads`` together) and FFN groups (gate/up/down together) get a ratio; hidden
size, embeddings and norms keep their width, which is all an HF config can describe.
With ``reconstruct=True`` the layers fed by removed channels (``o_proj``/``down_proj``,
BERT's output denses) are refitted by least squares on calibration activations
block by block (:func:`prunekit.llm.hf_refit.refit_blocks`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit._inputs import ExampleInputs, run_model
from prunekit.errors import ConfigError, check_fraction
from prunekit.importance.group import GroupCriterion, get_group_criterion
from prunekit.importance.group_data import calibrated
from prunekit.llm.blocks import find_blocks
from prunekit.llm.hf_families import (
    HFFamily,
    LayerWidths,
    apply_config,
    check_reloadable,
    family_of,
    layer_widths,
    updated_config,
)
from prunekit.llm.hf_refit import refit_blocks
from prunekit.structured import analyze, prune
from prunekit.train.recover import Reconstruction

__all__ = ["HFPruneResult", "prune_hf"]

Calib = torch.Tensor | Sequence[torch.Tensor | Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class HFPruneResult:
    """The pruned model (config updated), its structured plan (for ``prunekit.save``), the
    config fields changed {field: (old, new)}, per-layer widths before/after, parameter
    counts, the least-squares refit report, and whether ``from_pretrained`` reloads it."""

    model: nn.Module
    plan: dict[str, Any]
    config_changes: dict[str, tuple[int, int]]
    widths_before: LayerWidths
    widths_after: LayerWidths
    params_before: int
    params_after: int
    reconstruction: Reconstruction | None
    reloadable: bool
    note: str = ""

    @property
    def params_kept(self) -> float:
        return self.params_after / max(1, self.params_before)


def _calib_batches(calib: Calib | None, why: str) -> list[Any]:
    if calib is None:
        raise ConfigError(f"{why} needs calibration data: pass calib=<token ids of "
                          "shape (n, seqlen)> or a list of model input dicts")
    if isinstance(calib, torch.Tensor):
        batches: list[Any] = list(calib.split(1)) if calib.dim() >= 2 else [calib[None]]
    else:
        batches = list(calib)
    if not batches:
        raise ConfigError("calib is empty; pass at least one batch of token ids")
    return batches


def _forward(model: nn.Module, batch: Any) -> torch.Tensor:
    """Forward-only statistics (``activation``) need no loss: a scalar stand-in."""
    out = run_model(model, batch)
    first = out[0] if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple") else out
    return torch.as_tensor(first).float().mean()


def _model_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Gradient criteria use the model's own loss (batches that carry ``labels``)."""
    loss = getattr(run_model(model, batch), "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise ConfigError(f"{type(model).__name__} returned no loss for a calib batch; gradient "
                          f"criteria need batches with labels, e.g. calib=[{{'input_ids': ids, "
                          f"'labels': ids}}], or use importance='activation'")
    return loss


def _layer_names(path: str, blocks: nn.ModuleList, family: HFFamily, heads: float,
                 ffn: float) -> list[tuple[list[str], float]]:
    """(module paths of the groups' producing layers, ratio) for heads and for FFN."""
    out = []
    if heads > 0:
        assert family.query is not None  # checked by the caller
        out.append(([f"{path}.{i}.{family.query}" for i in range(len(blocks))], heads))
    if ffn > 0:
        out.append(([f"{path}.{i}.{family.ffn}" for i in range(len(blocks))], ffn))
    return out


def _global_ratios(model: nn.Module, inputs: ExampleInputs, importance: str | GroupCriterion,
                   roles: list[tuple[list[str], float]]) -> dict[str, float]:
    """Per-layer ratios from one ranking of mean-normalised scores across the layers of a
    role (heads or FFN): the same total is removed, where scores are lowest."""
    found = analyze(model, inputs, importance=importance, normalization="mean")
    owner = {m.name: i for i, g in enumerate(found.graph.groups) for m in g.members
             if m.root and m.kind == "module" and m.dim == "out"}
    ratios: dict[str, float] = {}
    for names, ratio in roles:
        missing = [n for n in names if n not in owner]
        if missing:
            raise ConfigError(f"uniform=False: no prunable group is produced by {missing[:2]}; "
                              f"use uniform=True")
        sizes = [found.graph.groups[owner[n]].size for n in names]
        entries = sorted((float(s), li) for li, n in enumerate(names)
                         for s in found.scores[owner[n]].tolist())
        keep = list(sizes)
        budget = math.floor(ratio * sum(sizes) + 1e-9)
        for _, li in entries:
            if budget == 0:
                break
            if keep[li] > 1:
                keep[li] -= 1
                budget -= 1
        ratios.update({n: (size - k) / size for n, size, k in zip(names, sizes, keep, strict=True)})
    return ratios


def _check_removed(ratio: float, old: tuple[int, ...] | None, new: tuple[int, ...] | None,
                   name: str, unit: str) -> None:
    """No silent no-op: a ratio below one unit per layer is an error."""
    if ratio > 0 and old is not None and old == new:
        raise ConfigError(f"{name}={ratio} removes nothing: it goes by whole {unit} and the "
                          f"layers have {list(old)}; pass {name} >= {1 / max(old):.3g}")


def prune_hf(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    heads: float = 0.0,
    ffn: float = 0.0,
    importance: str | GroupCriterion = "l2",
    uniform: bool = True,
    calib: Calib | None = None,
    reconstruct: bool = False,
    require_reloadable: bool = True,
) -> HFPruneResult:
    """Remove the fraction ``heads`` of every layer's attention heads (key/value groups with
    their query heads under GQA) and ``ffn`` of its FFN neurons; returns a pruned copy.

    ``uniform=False`` ranks heads (and FFN neurons) across layers, so layers end up with
    different widths — which no HF config can hold: that raises unless
    ``require_reloadable=False`` (then save with ``prunekit.save(result, dir)`` and load with
    ``prunekit.load(dir, AutoModel.from_config(original_config))``). ``reconstruct=True``
    refits the consumers of removed channels on ``calib`` (token ids ``(n, seqlen)`` or a
    list of input dicts); ``importance="activation"`` (|W|·RMS(X), Wanda-style, summed over
    a unit's rows) scores on ``calib`` too. The config is checked to describe every pruned
    weight's shape.
    """
    family = family_of(model)
    heads = check_fraction("heads", heads)
    ffn = check_fraction("ffn", ffn)
    if heads == 0 and ffn == 0:
        raise ConfigError("heads=0 and ffn=0 prune nothing; pass e.g. heads=0.25 or ffn=0.3")
    if heads > 0 and family.query is None:
        raise ConfigError(f"heads={heads}: {family.why_no_heads}; pass heads=0.0")
    if heads > 0 and family.heads_key is None and require_reloadable:
        raise ConfigError(f"heads={heads}: {family.why_no_heads}. Pass heads=0.0, or "
                          f"require_reloadable=False and save with prunekit.save(result, dir) "
                          f"/ prunekit.load(dir, base_model)")
    criterion = get_group_criterion(importance)
    needs_data = reconstruct or criterion.needs_data
    why = "reconstruct=True" if reconstruct else f"importance={criterion.name!r}"
    batches = _calib_batches(calib, why) if needs_data else []
    path, blocks = find_blocks(model)
    roles = _layer_names(path, blocks, family, heads, ffn)
    with contextlib.ExitStack() as stack:
        if criterion.needs_data:  # the statistic sits in .grad while scoring, then goes
            loss = _forward if criterion.name == "activation" else _model_loss
            stack.enter_context(calibrated(model, criterion, batches, loss_fn=loss))
        if uniform:
            ratios = {name: ratio for names, ratio in roles for name in names}
        else:
            ratios = _global_ratios(model, example_inputs, criterion, roles)
        result = prune(model, example_inputs, ratios=ratios, importance=criterion)
    pruned = result.model
    for param in pruned.parameters():
        param.grad = None
    _, pruned_blocks = find_blocks(pruned, path)
    before = layer_widths(blocks, family, model.config)
    after = layer_widths(pruned_blocks, family, model.config)
    _check_removed(heads, before.kv_heads, after.kv_heads, "heads", "key/value groups")
    _check_removed(ffn, before.ffn, after.ffn, "ffn", "FFN neurons")
    changes, problems = updated_config(family, before, after)
    apply_config(pruned.config, changes)
    if not problems:
        try:
            check_reloadable(pruned)
        except ConfigError as exc:
            problems.append(str(exc))
    note = "; ".join(problems)
    if note and require_reloadable:
        raise ConfigError(f"the pruned model cannot be described by its config: {note}")
    report = None
    if reconstruct:
        report = refit_blocks(pruned, model, result.plan, batches)
    return HFPruneResult(pruned, result.plan, changes, before, after,
                         result.before.total_params, result.after.total_params, report,
                         reloadable=not note, note=note)
