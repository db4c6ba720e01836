"""Modules the example inputs never reached, coupled like their siblings that ran.

Code that picks among the members of a ``ModuleList`` / ``ModuleDict`` by the data (the
experts of a mixture-of-experts layer, layers after an early exit), or among siblings held
as attributes (VLMo's ``mlp_text`` / ``mlp_imag`` / ``mlp_vl``, picked by modality), runs
only some of them on a small example. The trace has no record of the others, so nothing says
which widths they read. Where at least two siblings of the same class and tensor shapes ran
and the trace coupled them alike — each reads and writes the same channels of the rest of
the model, and its own widths (an expert's hidden units) form the same pattern of classes —
an unreached sibling of that layout is taken to be coupled alike too: its records are copies
of one reached sibling's, with fresh labels for that sibling's own classes. The forward
check then runs each copy on its sibling's inputs (structured/pruning.py).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.graph.labels import NEUTRAL, LabelSpace, sorted_unique
from prunekit.graph.records import ModuleDim, ModuleRecord, Trace

__all__ = ["mirror_unreached"]


def mirror_unreached(trace: Trace) -> list[tuple[str, str]]:
    """Add records to ``trace`` for each unreached member of a container whose reached
    siblings of its layout (at least two) are coupled alike, and set ``trace.mirrored``
    (member -> the sibling copied); innermost containers first, so that a layer copied
    whole carries its experts' copies too. Returns (unreached member, a sibling that ran)
    for each member it could not couple."""
    if not trace.containers and not trace.parents:
        return []
    # reached: ran (its hooks fired on something), or holds a tensor an op read (a layer
    # called as ``lin.forward(x)``, as PyG's TAGConv does, fires no hook)
    reached = set(trace.ran)
    # a module whose children ran is reached, called or not (a Perceiver's inner ModuleList
    # unpacked as ``for cross, ff, (sa, sf) in self.layers``)
    for name in [*trace.ran, *trace.params]:
        name = name.rpartition(".")[0] if name in trace.ran else name
        while name and name not in reached:
            reached.add(name)
            name = name.rpartition(".")[0]
    copied: dict[str, str] = {}
    refused: list[tuple[str, str]] = []
    index: _Index | None = None  # built when first needed, again after records are added
    held = {id(module) for _, module in trace.containers}
    for path, container in sorted([*trace.containers, *trace.parents],
                                  key=lambda item: -item[0].count(".")):
        children = [(f"{path}.{key}" if path else key, child)
                    for key, child in container.named_children()]
        ran = [(name, child) for name, child in children if name in reached]
        missing = [(name, child) for name, child in children if name not in reached
                   and any(True for _ in child.parameters())]
        if not ran or not missing:
            continue
        layouts = {name: _layout(child) for name, child in ran}
        sources: dict[tuple[object, ...], str | None] = {}
        for name, child in missing:
            layout = _layout(child)
            if layout not in sources:
                peers = [peer for peer, _ in ran if layouts[peer] == layout]
                if len(peers) >= 2:
                    index = index or _Index(trace, reached)
                    sources[layout] = index.alike(peers)
                else:
                    sources[layout] = None
            source = sources[layout]
            if source is None:
                if id(container) in held:  # (a module of its own that never ran, held
                    refused.append((name, ran[0][0]))  # as an attribute: not judged here)
                continue
            index = index or _Index(trace, reached)
            _copy_records(trace, index, source, name, child)
            copied[name] = source
            reached.update(f"{name}.{n}" if n else name for n, _ in child.named_modules())
        if any(name in copied for name, _ in missing):
            index = None  # the copies are records an outer container's siblings hold
    trace.mirrored = copied
    return refused


def _layout(module: nn.Module) -> tuple[object, ...]:
    """Class, submodule classes and tensor names, shapes and dtypes: what two siblings must
    share for one to be coupled like the other."""
    return (type(module),
            tuple((name, type(sub)) for name, sub in module.named_modules()),
            tuple((name, tuple(t.shape), t.dtype) for name, t in
                  [*module.named_parameters(), *module.named_buffers()]))


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _relative(name: str, prefix: str) -> str:
    return name[len(prefix) + 1:] if name != prefix else ""


class _Index:
    """The classes of every label tensor the trace's records hold, by owning path."""

    def __init__(self, trace: Trace, reached: set[str]) -> None:
        self.space = trace.space
        self.blocked = trace.space.blocked_roots()
        # (owning path, record and dim, roots with broadcast dims at size 1); a layer run on
        # empty tensors only is not reached, and what its handler made of them is left out
        self.entries: list[tuple[str, str, np.ndarray]] = []
        for record in trace.modules.values():
            if record.name not in reached:
                continue
            for dim, value in record.dims.items():
                self._add(record.name, f"module:{dim}", value.labels)
        for param in trace.params.values():
            self._add(param.name, "param:ids", param.ids)
            for axis, (vector, _) in param.axes.items():
                self._add(param.name, f"param:axis{axis}", vector)
        for (path, attr), labels in trace.bindings.items():
            self._add(path, f"attr:{attr}", labels)

    def _add(self, path: str, key: str, labels: Tensor) -> None:
        self.entries.append((path, key, roots_of(self.space, labels)))

    def outside(self, peer: str) -> set[int]:
        """The classes held by a record outside ``peer``: the channels it shares."""
        found = [roots.reshape(-1) for path, _, roots in self.entries
                 if not _inside(path, peer)]
        return set(sorted_unique(np.concatenate(found)).tolist()) if found else set()

    def own(self, peer: str) -> np.ndarray:
        """The sorted classes that only ``peer``'s records hold (NEUTRAL never)."""
        outside = self.outside(peer)
        inside = [roots.reshape(-1) for path, _, roots in self.entries if _inside(path, peer)]
        found = sorted_unique(np.concatenate(inside)).tolist() if inside else []
        return np.array([r for r in found if r != NEUTRAL and r not in outside], np.int64)

    def alike(self, peers: list[str]) -> str | None:
        """The first of ``peers`` if all are coupled alike (the same records, the same
        outside classes at the same places, the same pattern of their own classes)."""
        blocked = np.fromiter(self.blocked, np.int64, len(self.blocked))
        signatures = []
        for peer in peers:
            held = sorted(((_relative(path, peer), key, roots) for path, key, roots in
                           self.entries if _inside(path, peer)), key=lambda e: e[:2])
            flat = np.concatenate([roots.reshape(-1) for *_, roots in held]) if held else \
                np.zeros(0, np.int64)
            own = np.isin(flat, self.own(peer))
            values = flat[own]
            # own classes numbered by order of first sight; blocked ones told apart
            distinct, first = np.unique(values, return_index=True)
            number = np.empty(len(distinct), np.int64)
            number[np.argsort(first)] = np.arange(len(distinct))
            flat[own] = -1 - 2 * number[np.searchsorted(distinct, values)] - \
                np.isin(values, blocked)
            signatures.append(([(rel, key, roots.shape) for rel, key, roots in held],
                               flat.tobytes()))
        return peers[0] if all(s == signatures[0] for s in signatures[1:]) else None


def roots_of(space: LabelSpace, labels: Tensor) -> np.ndarray:
    return space.find_compact(labels.long()).numpy()


def _copy_records(trace: Trace, index: _Index, source: str, target: str,
                  module: nn.Module) -> None:
    """Records for ``module`` (at ``target``) copied from those of ``source``: its shared
    classes kept, each of its own classes a fresh label (blocked for the same reason)."""
    space = trace.space
    mine = index.own(source)
    fresh = space.new_ids(len(mine)).numpy().copy()
    for root, new in zip(mine.tolist(), fresh.tolist(), strict=True):
        if root in index.blocked:
            space.block(torch.tensor([new]), index.blocked[root])

    def moved(labels: Tensor) -> Tensor:
        roots = roots_of(space, labels)
        if not len(mine):
            return torch.from_numpy(roots).expand(labels.shape)
        at = np.searchsorted(mine, roots).clip(max=len(mine) - 1)
        out = np.where(mine[at] == roots, fresh[at], roots)
        return torch.from_numpy(out).expand(labels.shape)

    def path(name: str) -> str:
        rest = _relative(name, source)
        return f"{target}.{rest}" if rest else target

    tensors: dict[str, Tensor] = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(module.named_buffers(remove_duplicate=False))
    for record in [r for r in trace.modules.values() if _inside(r.name, source)]:
        name = path(record.name)
        trace.modules[name] = ModuleRecord(
            name, module.get_submodule(_relative(name, target)),
            {dim: ModuleDim(moved(d.labels), d.root, d.width) for dim, d in record.dims.items()})
    for param in [p for p in trace.params.values() if _inside(p.name, source)]:
        name = path(param.name)
        trace.params[name] = replace(
            param, name=name, tensor=tensors[_relative(name, target)], ids=moved(param.ids),
            sliced_axes=set(param.sliced_axes),
            selected=None if param.selected is None else param.selected.clone(),
            axes={axis: (moved(vector), root) for axis, (vector, root) in param.axes.items()})
    for (owner, attr), labels in list(trace.bindings.items()):
        if _inside(owner, source):
            trace.bindings[(path(owner), attr)] = moved(labels)
    own = set(mine.tolist())
    for labels, multiple in list(trace.aligned):
        if own.intersection(roots_of(space, labels).reshape(-1).tolist()):
            trace.aligned.append((moved(labels), multiple))
    for where, labels in list(trace.width_numbers):
        if own.intersection(roots_of(space, labels).reshape(-1).tolist()):
            trace.width_numbers.append((where, moved(labels)))
