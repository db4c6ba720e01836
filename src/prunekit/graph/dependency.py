"""Dependency groups: the coupled slices that must be removed together, from one trace.

After tracing, every equivalence class of channel labels is a *unit*: removing it removes
one index (or a block of indices) from every layer dimension and parameter that holds it
— the producing conv's filters, the BN entries, the next conv's input slices, residual
partners, concat slices, flatten blocks. A *member* is one such dimension with the unit of
each of its indices. A *group* gathers the units of producers that share units (a
residual chain is one group; the two inputs of a concat are two groups, and the consumer
of the concat is a member of both). Units that reach a model input or output, an
unsupported op or an ignored layer are *blocked* and never removed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.graph.labels import NEUTRAL, LabelSpace, in_sorted, sorted_unique
from prunekit.graph.numbers import rebound_attributes
from prunekit.graph.records import ModuleRecord
from prunekit.graph.trace import ParamRecord, Trace

__all__ = ["DependencyGraph", "Group", "Member", "build_groups"]

# the dims a layer reads (Linear/Conv "in", Bilinear's two inputs, attention's key and value
# widths): ignore= leaves them to the layers that make them
_READ_DIMS = frozenset(("in", "in1", "in2", "kdim", "vdim"))


MemberKind = Literal["module", "param", "attr"]


@dataclass(frozen=True)
class Member:
    """One dimension that shrinks when its units go: a module dim, a parameter axis, or an
    int attribute that code uses to size a reshape (``kind="attr"``, ``dim`` its name)."""

    kind: MemberKind
    name: str
    dim: str
    units: Tensor
    root: bool
    axis: int | None = None
    layer: bool = False  # a parameter axis that code uses as a layer weight's axis
    width: int = 1  # channels of the layer per index (head_dim for a dim of whole heads)
    follows: bool = False  # an attribute that only repeats a layer's size (Trace.follows)


@dataclass(frozen=True)
class Group:
    """Prunable ``units`` (sorted unit ids) and every member that holds one of them;
    ``step``: it keeps a multiple of that many units, or all (a kernel's layout rule)."""

    index: int
    units: Tensor
    members: tuple[Member, ...]
    step: int = 1

    @property
    def size(self) -> int:
        return int(self.units.numel())

    def describe(self) -> str:
        roots = [f"{m.name}.{m.dim}" for m in self.members if m.root]
        return f"group {self.index} ({self.size} units; {', '.join(roots[:4])})"


@dataclass(frozen=True)
class DependencyGraph:
    """Groups, members and why the rest is kept whole (``blocked``: unit -> reason)."""

    trace: Trace
    groups: tuple[Group, ...]
    members: tuple[Member, ...]
    blocked: dict[int, str]


AxesOf = Callable[[nn.Module], "Sequence[tuple[str, int, str]] | None"]


def build_groups(model: nn.Module, trace: Trace, ignore: Iterable[nn.Module] = (),
                 axes_of: AxesOf | None = None) -> DependencyGraph:
    """Turn a trace into dependency groups; ``ignore`` layers keep their output width.

    ``axes_of(module)`` lists ``(tensor attr, axis, dim)`` for a layer's own tensors; it
    lets a tensor shared by several layers (tied weights) be cut consistently: the dims that
    cut the same axis are joined. Without it, shared tensors keep their shape."""
    space = trace.space
    # a traced module is a submodule recorded under its named_modules() path, so only an
    # ignored module the trace did not record needs the walk over the model
    traced = {id(record.module): record for record in trace.modules.values()}
    names: dict[int, str] | None = None
    for module in ignore:
        if not (isinstance(module, nn.Module) and id(module) in traced):
            if names is None:
                names = {id(m): n for n, m in model.named_modules()}
            if not isinstance(module, nn.Module) or id(module) not in names:
                raise ConfigError(
                    f"ignore contains {type(module).__name__} which is not a submodule of "
                    f"the model; pass the layer objects themselves, e.g. ignore=[model.fc]"
                )
        if not module._modules:
            _keep_made_widths(space, traced.get(id(module)), "is in ignore=")
            continue
        # a block (a teacher, a backbone): every layer in it keeps the widths it makes, and
        # so does every tensor of it that code uses directly (its queries, its tokens)
        for sub in module.modules():
            _keep_made_widths(space, traced.get(id(sub)), "is in a module in ignore=")
        if id(module) in traced:
            path = traced[id(module)].name
        else:
            if names is None:
                names = {id(m): n for n, m in model.named_modules()}
            path = names[id(module)]
        prefix = f"{path}." if path else ""
        for name, param in trace.params.items():
            if name.startswith(prefix):  # (as a layer weight too: CLIP's x @ self.proj)
                reason = f"{name!r} is in a module in ignore="
                for labels in (param.ids, *(vector for vector, _ in param.axes.values())):
                    space.block(labels, reason)
    _tie_shared_weights(trace, axes_of)
    layer_axes = _layer_axes(model, trace, axes_of)
    param_axes: dict[str, int | None] = {}
    for name, param in trace.params.items():
        allowed = layer_axes.get(name)
        if allowed is not None:
            _hold_other_axes(trace, param, allowed)
        if not param.axes:
            param_axes[name] = axis = _param_axis(trace, param)
            if allowed is not None and axis not in allowed | {None}:
                space.block(param.ids, _vocabulary_reason(name))
                param_axes[name] = None
            elif axis is not None and axis in param.fixed_axes:
                space.block(param.ids, f"parameter {name!r} meets a model input (or another "
                                       f"tensor kept whole) along its axis {axis}, so that "
                                       f"axis keeps its size")
                param_axes[name] = None
        elif param.whole or param.selected is not None:
            reason = f"parameter {name!r} is used both as a layer weight and elementwise"
            for vector, _ in param.axes.values():
                space.block(vector, reason)
            space.block(param.ids, reason)
    # (kind, name, dim, labels, root, axis, layer, width) of every member; the labels of all
    # are resolved by one find after the last union (finds in between give the same roots)
    specs: list[tuple[MemberKind, str, str, Tensor, bool, int | None, bool, int]] = []
    for record in trace.modules.values():
        for dim_name, dim in record.dims.items():
            specs.append(("module", record.name, dim_name, dim.labels, dim.root, None, False,
                          dim.width))
    for (path, attr), labels in trace.bindings.items():
        specs.append(("attr", path, attr, labels, False, None, False, 1))
    direct = [_param_member(trace, trace.params[name], axis)
              for name, axis in param_axes.items() if axis is not None]
    for name, param in trace.params.items():
        if param.axes and not (param.whole or param.selected is not None):
            for weight_axis, (vector, root) in sorted(param.axes.items()):
                specs.append(("param", name, f"axis{weight_axis}", vector, root, weight_axis,
                              True, 1))
    units = _find_all(space, [spec[3] for spec in specs])
    members: list[Member] = []
    arrays: list[np.ndarray] = []
    for (kind, name, dim_name, labels, root, axis, layer, width), found in zip(
            specs, units, strict=True):
        vector = torch.from_numpy(found)
        members.append(Member(kind, name, dim_name,
                              vector if labels.dim() == 1 else vector.view(labels.shape),
                              root, axis, layer=layer, width=width,
                              follows=kind == "attr" and (name, dim_name) in trace.follows))
        arrays.append(found)
    # members of directly used parameters go between the attrs and the layer parameters
    at = len(specs) - sum(1 for spec in specs if spec[0] == "param")
    members[at:at] = direct
    arrays[at:at] = [member.units.reshape(-1).numpy() for member in direct]
    blocked = space.blocked_roots()
    groups = _components(members, arrays, blocked, functools.partial(_remade, model, trace))
    if trace.aligned:
        groups = _with_steps(space, groups, trace.aligned)
    return DependencyGraph(trace, tuple(groups), tuple(members), blocked)


def _keep_made_widths(space: LabelSpace, record: ModuleRecord | None, why: str) -> None:
    """Block the dims ``record``'s layer makes (not those it reads); None: not traced, so
    no dims to block."""
    if record is not None:
        for dim_name, dim in record.dims.items():
            if dim_name not in _READ_DIMS:  # an ignored layer keeps the widths it makes
                space.block(dim.labels, f"layer {record.name!r} {why}")


def _with_steps(space: LabelSpace, groups: list[Group],
                aligned: list[tuple[Tensor, int]]) -> list[Group]:
    """Each group with the unit step that the aligned dims holding its channels need: a dim
    that must keep a multiple of N channels, where each unit spans w of them, keeps a
    multiple of N / gcd(N, w) units (w counted as in allocation's ``round_to``)."""
    dims = [(space.find(labels).numpy(), multiple) for labels, multiple in aligned]
    out = []
    for group in groups:
        step = 1
        for roots, multiple in dims:
            channels = int(in_sorted(roots, group.units.numpy()).sum())
            if channels:
                width = channels // group.size if channels % group.size == 0 else 1
                step = math.lcm(step, multiple // math.gcd(multiple, width))
        out.append(group if step == 1 else replace(group, step=step))
    return out


def _find_all(space: LabelSpace, labels: Sequence[Tensor]) -> list[np.ndarray]:
    """``space.find`` of every tensor in ``labels``, flattened, by one find over them all."""
    flats = [_np_flat(vector) for vector in labels]
    if not flats:
        return []
    roots = space.find(torch.from_numpy(np.concatenate(flats))).numpy()
    bounds = np.cumsum([flat.size for flat in flats]).tolist()
    return [roots[a:b] for a, b in zip([0, *bounds[:-1]], bounds, strict=True)]


def _np_flat(labels: Tensor) -> np.ndarray:
    return (labels if labels.dtype == torch.long else labels.long()).numpy().reshape(-1)


def _layer_axes(model: nn.Module, trace: Trace, axes_of: AxesOf | None
                ) -> dict[str, set[int]]:
    """For each parameter the code uses directly that is a layer's own tensor (``A @
    self.emb.weight``), the axes that layer's adapter cuts: only those may shrink, as the
    layer's attributes follow them (an embedding's rows are its vocabulary, read by ids)."""
    found: dict[str, set[int]] = {}
    if axes_of is None:
        return found
    for name in trace.params:
        path, _, attr = name.rpartition(".")
        try:
            owner = model.get_submodule(path)
        except AttributeError:
            continue
        axes = axes_of(owner)
        allowed = {axis for held, axis, _ in axes or () if held == attr}
        if allowed:
            found[name] = allowed
    return found


def _hold_other_axes(trace: Trace, param: ParamRecord, allowed: set[int]) -> None:
    """Keep whole the axes of a layer's tensor, used as a functional layer's weight, that the
    layer's own adapter does not cut."""
    for axis, (vector, _) in param.axes.items():
        if axis not in allowed:
            trace.space.block(vector, _vocabulary_reason(param.name))


def _vocabulary_reason(name: str) -> str:
    return (f"parameter {name!r} is a layer's own tensor, used directly along an axis its "
            f"layer does not cut (an embedding's rows are its vocabulary, read by ids), so "
            f"that axis keeps its size")


def _tie_shared_weights(trace: Trace, axes_of: AxesOf | None) -> None:
    """Join the dims of layers that cut the same axis of one shared tensor; keep whole any
    dim that cuts an axis another holder cannot cut."""
    owned = [(record, _own_parameters(record.module)) for record in trace.modules.values()]
    # only a tensor with two owners (by name) is tied: skip axes_of for layers holding none
    names_of: dict[int, set[str]] = {}
    for record, own in owned:
        for _, tensor in own:
            names_of.setdefault(id(tensor), set()).add(record.name)
    for param in trace.params.values():
        names_of.setdefault(id(param.tensor), set()).add(param.name)
    tied = {key for key, names in names_of.items() if len(names) > 1}
    if not tied:
        return
    holders: dict[int, list[tuple[str, int | None, str | None]]] = {}
    for record, own in owned:
        if not any(id(tensor) in tied for _, tensor in own):
            continue  # all its tensors have one owner (and axes_of is not needed)
        axes = axes_of(record.module) if axes_of is not None else None
        for attr, tensor in own:
            if id(tensor) not in tied:
                continue  # one owner: nothing to tie
            if axes is None:
                holders.setdefault(id(tensor), []).append((record.name, None, None))
                continue
            for name, axis, dim in axes:
                if name == attr and dim in record.dims:
                    holders.setdefault(id(tensor), []).append((record.name, axis, dim))
            holders.setdefault(id(tensor), []).append((record.name, -1, None))
    layer_axes: dict[str, dict[int, Tensor]] = {}  # a tied tensor read as a layer weight
    for param in trace.params.values():
        if id(param.tensor) not in tied:
            continue
        if param.axes and not (param.whole or param.selected is not None):
            # by a functional layer (F.conv_transpose2d(h, self.enc.weight), a tied
            # decoder): each axis it reads or makes is cut like a layer's dim
            layer_axes[param.name] = {axis: vector for axis, (vector, _) in param.axes.items()}
            holders.setdefault(id(param.tensor), []).extend(
                (param.name, axis, "") for axis in param.axes)
        elif param.tensor.dim() == 1 and param.selected is None:
            # a vector read directly (DBB's pad values from its BatchNorm's weight and
            # bias, ``bn(x) + bn.weight.view(1, -1, 1, 1)``): it has one axis to cut
            layer_axes[param.name] = {0: param.ids}
            holders.setdefault(id(param.tensor), []).append((param.name, 0, ""))
        else:
            holders.setdefault(id(param.tensor), []).append((param.name, None, None))
    space = trace.space
    for entries in holders.values():
        owners = {name for name, _, _ in entries}  # two or more: the tensor is tied
        reason = _shared_reason(owners)
        unknown = [entry[0] for entry in entries if entry[1] is None]
        cuts: dict[int, list[tuple[str, str]]] = {}
        for owner, cut_axis, cut_dim in entries:
            if cut_axis is not None and cut_axis >= 0 and cut_dim is not None:
                cuts.setdefault(cut_axis, []).append((owner, cut_dim))
        for axis, dims in cuts.items():
            cutters = {owner for owner, _ in dims}
            vectors = [layer_axes[owner][axis] if owner in layer_axes
                       else trace.modules[owner].dims[d].labels for owner, d in dims]
            if unknown or cutters != owners or len({v.numel() for v in vectors}) != 1:
                for vector in vectors:
                    space.block(vector, reason)
                continue
            for vector in vectors[1:]:
                space.union(vectors[0], vector)
        for owner in unknown:
            held = trace.modules.get(owner)
            if held is not None:
                for module_dim in held.dims.values():
                    space.block(module_dim.labels, reason)
            elif owner in trace.params:
                space.block(trace.params[owner].ids, reason)


def _shared_reason(owners: set[str]) -> str:
    """Why a tensor read by several owners keeps its axes whole: tied weights, or one
    layer's weight also read directly by the code (VQ-GAN's codebook norms,
    ``self.embedding.weight ** 2``)."""
    layers = [name for name in owners if not any(name.startswith(other + ".")
                                                 for other in owners if other != name)]
    direct = sorted(name for name in owners if name not in layers)
    if len(layers) == 1 and direct:
        return (f"the weight of {layers[0]} is also read directly by the code "
                f"({', '.join(direct)}), in a way that does not tell which axis holds its "
                f"channels")
    return f"a weight is shared by {', '.join(sorted(owners))} (tied weights)"


def _own_parameters(module: nn.Module) -> list[tuple[str, Tensor]]:
    """What ``module.named_parameters(recurse=False)`` yields (no None, each tensor once),
    without its generator machinery."""
    seen: set[int] = set()
    out: list[tuple[str, Tensor]] = []
    for attr, tensor in module._parameters.items():
        if tensor is not None and id(tensor) not in seen:
            seen.add(id(tensor))
            out.append((attr, tensor))
    return out


def _param_axis(trace: Trace, param: ParamRecord) -> int | None:
    """The axis along which a directly used parameter's units run, or block it (None).

    Elements never read (a positional table sliced to the sequence length) do not count.
    A parameter with no elements (an axis of size 0) has nothing to cut and stays as it is;
    channels are followed through elements, so which channels its other axes match is
    unknown: where one of them is wider than 1 (one that could shrink) that is an error."""
    space = trace.space
    if param.ids.numel() == 0:
        shape = tuple(param.ids.shape)
        wide = [axis for axis, size in enumerate(shape) if size > 1]
        if wide:
            raise ConfigError(
                f"parameter {param.name!r} has no elements (shape {shape}) and is used "
                f"directly in forward; prunekit follows channels through a tensor's "
                f"elements, so it cannot tell which channels its axis {wide[0]} (size "
                f"{shape[wide[0]]}) must match, and cutting them would break the model. "
                f"It holds no values: remove it from the model before pruning")
        return None
    units = space.find(param.ids).numpy()
    read = _read_mask(param, units.shape)
    for axis in range(units.ndim):
        if units.shape[axis] <= 1:
            continue
        flat, seen = _rows_np(units, axis), _rows_np(read, axis)
        first = np.where(seen, flat, -1).max(1, keepdims=True)
        if bool(((flat == first) | ~seen).all()):
            if axis in param.sliced_axes:
                if units.size > 1 and bool((units == units.flat[0]).all()) and \
                        units.flat[0] in space.blocked_root_ids():
                    return None  # one class kept whole, already with its reason (a cache
                    # written at [:bsz, start:end]: no axis of it is known to be a channel's)
                space.block(param.ids, f"parameter {param.name!r} is sliced along its channel "
                                       f"axis by sizes written in the code")
                return None
            return axis
    space.block(param.ids, f"parameter {param.name!r} is used directly and its elements do "
                           f"not line up with channels along one axis")
    return None


def _param_member(trace: Trace, param: ParamRecord, axis: int) -> Member:
    units = trace.space.find(param.ids).numpy()
    flat, seen = _rows_np(units, axis), _rows_np(_read_mask(param, units.shape), axis)
    per_index = np.where(seen, flat, 0).max(1)
    per_index = np.where(seen.any(1), per_index, flat[:, 0])
    return Member("param", param.name, f"axis{axis}", torch.from_numpy(per_index), True, axis)


def _read_mask(param: ParamRecord, shape: tuple[int, ...]) -> np.ndarray:
    """Which elements of ``param`` traced code read (all, unless it only sliced it)."""
    if param.selected is not None and not param.whole:
        return param.selected.numpy()
    return np.ones(shape, dtype=bool)


def _rows_np(array: np.ndarray, axis: int) -> np.ndarray:
    """``array`` (not empty: :func:`_param_axis` passes over an empty parameter) as
    ``[size along axis, -1]`` (label and mask arrays are small: NumPy)."""
    return np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)


def _made_by_code(held: list[Member], remade: Callable[[Member], str | None]) -> str | None:
    """Why a class of members is kept whole when every member that makes its channels is a
    tensor the model's code remakes (else None)."""
    reason = None
    for member in held:
        if member.root:
            reason = remade(member) if member.kind == "param" and not member.layer else None
            if reason is None:
                return None
    return reason


def _remade(model: nn.Module, trace: Trace, member: Member) -> str | None:
    """Why ``member`` (a tensor used directly) is not cut: a buffer or tensor attribute,
    not a parameter, that its module's code assigns after construction (ConViT's
    ``self.rel_indices = self.get_rel_indices(N)``), at the width that code writes. Cutting
    it would hold only until the code remakes it: on another input size, or in a model
    built afresh by ``pk.load`` (a non-persistent buffer is not saved). None otherwise."""
    record = trace.params.get(member.name)
    if record is None or isinstance(record.tensor, nn.Parameter):
        return None
    path, _, attr = member.name.rpartition(".")
    try:
        owner = model.get_submodule(path)
    except AttributeError:
        return None
    where = next((line for name, line in rebound_attributes(type(owner)) if name == attr), None)
    if where is None:
        return None
    return (f"{member.name!r} is not a parameter and the model's code remakes it "
            f"({where}) at the width that code writes, so the channels it makes are kept "
            "whole")


def _components(members: list[Member], arrays: list[np.ndarray], blocked: dict[int, str],
                remade: Callable[[Member], str | None] = lambda member: None) -> list[Group]:
    """Union the root members that share units; each class of members is one group.

    A class whose units no layer holds, or whose units only tensors that the model's code
    remakes produce (``remade(member)`` gives the reason), is blocked instead.

    Vectorised over all (member, unit) pairs at once with NumPy; only the few member-member
    links go through a Python union-find. Group order, unit order and member order are
    those of a walk over the members in order, each member's units ascending. ``arrays``:
    each member's units, flat."""
    if not members:
        return []
    stop = np.array(sorted({*blocked, NEUTRAL}), dtype=np.int64)
    sizes = np.array([a.size for a in arrays], dtype=np.int64)
    flat = np.concatenate(arrays).astype(np.int64, copy=False)
    owner_of = np.repeat(np.arange(len(members), dtype=np.int64), sizes)
    free = ~in_sorted(flat, stop)
    flat, owner_of = flat[free], owner_of[free]
    if flat.size == 0:
        return []
    width = int(flat.max()) + 1
    pairs = sorted_unique(owner_of * width + flat)  # sorted by member, then unit
    pair_member, pair_unit = pairs // width, pairs % width
    is_root = np.array([m.root for m in members], dtype=bool)
    rooted = is_root[pair_member]
    root_member, root_unit = pair_member[rooted], pair_unit[rooted]
    if root_unit.size == 0:
        return []
    # the first root member (in member order) that holds each unit owns it
    units, first, _ = _unique_first(root_unit)
    order = np.argsort(first, kind="stable")  # units in the order the walk meets them
    units, first = units[order], first[order]
    owner = root_member[first]
    lookup = np.full(width, -1, dtype=np.int64)
    lookup[units] = owner
    parent = list(range(len(members)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    links = lookup[root_unit] != root_member
    count = len(members)  # distinct (a, b) links in (a, b) order, as one int64 key each
    keys = sorted_unique(root_member[links] * count + lookup[root_unit[links]])
    for a, b in zip((keys // count).tolist(), (keys % count).tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    # a group per class of members, numbered in the order the walk meets its first unit
    member_root = np.array([find(i) for i in range(len(members))], dtype=np.int64)
    roots, first_unit, root_index = _unique_first(member_root[owner])
    slots = int(roots.size)
    rank = np.empty(slots, dtype=np.int64)
    rank[np.argsort(first_unit, kind="stable")] = np.arange(slots)
    unit_slot = rank[root_index.reshape(-1)]
    slot_lookup = np.full(width, -1, dtype=np.int64)
    slot_lookup[units] = unit_slot
    pair_slot = slot_lookup[pair_unit]
    owned = pair_slot >= 0
    held_pairs = sorted_unique(pair_member[owned] * slots + pair_slot[owned])
    holders: list[list[Member]] = [[] for _ in range(slots)]
    for member_index, k in zip((held_pairs // slots).tolist(), (held_pairs % slots).tolist(),
                               strict=True):
        holders[k].append(members[member_index])
    by_slot = np.argsort(unit_slot, kind="stable")
    bounds = np.searchsorted(unit_slot[by_slot], np.arange(slots + 1))
    groups: list[Group] = []
    for k, held in enumerate(holders):
        group_units = np.sort(units[by_slot[bounds[k]:bounds[k + 1]]])
        if not any(m.kind == "module" or m.layer for m in held):
            for unit in group_units.tolist():
                blocked[unit] = "only used by parameters, not by any layer"
            continue
        reason = _made_by_code(held, remade)
        if reason is not None:
            for unit in group_units.tolist():
                blocked[unit] = reason
            continue
        groups.append(Group(len(groups), torch.from_numpy(group_units), tuple(held)))
    return groups


def _unique_first(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(values, return_index=True, return_inverse=True)`` of a non-empty 1-D
    int64 array, by the same stable sort without its wrapper's overhead."""
    perm = np.argsort(values, kind="stable")
    ordered = values[perm]
    head = np.empty(ordered.size, dtype=bool)
    head[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=head[1:])
    inverse = np.empty(values.size, dtype=np.int64)
    inverse[perm] = np.cumsum(head) - 1
    return ordered[head], perm[head], inverse
