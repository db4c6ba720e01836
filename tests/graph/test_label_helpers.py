"""The label helpers' cheaper forms answer what the plain definitions answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from prunekit.graph.labels import (
    LabelSpace,
    _np,
    _np_compact,
    as_line,
    cut_broadcast,
    emit,
    fixed_shape,
    sorted_unique,
    varies,
    varying,
)


def _examples() -> list[Tensor]:
    ids = torch.arange(1, 7)
    return [
        ids,
        torch.arange(24).reshape(2, 3, 4),
        emit(ids, 1, (2, 6, 3)),
        emit(ids, 2, (2, 1, 6)).transpose(0, 2),
        emit(ids, 0, (6, 2)).reshape(6, 2).expand(6, 2),
        torch.full((), 5).expand(2, 3),
        torch.full((), 5).expand(0, 3),
        torch.arange(6).reshape(1, 6).expand(4, 6).contiguous(),  # constant along 0, dense
        torch.tensor([[1, 1], [2, 2]]).view(2, 1, 2).expand(2, 3, 2),
    ]


@pytest.mark.parametrize("labels", _examples())
def test_np_compact_matches_cut_broadcast(labels: Tensor) -> None:
    fast, plain = _np_compact(labels), _np(cut_broadcast(labels, labels)[0])
    assert fast.shape == plain.shape and np.array_equal(fast, plain)


@pytest.mark.parametrize("labels", _examples())
def test_varying_and_as_line_match_varies(labels: Tensor) -> None:
    dims = {d for d in range(labels.dim()) if varies(labels, d)}
    assert varying(labels) == dims
    line = as_line(labels)
    if len(dims) != 1:
        assert line is None
    else:
        assert line is not None and line[0] == dims.pop()
        assert torch.equal(emit(line[1], line[0], labels.shape), labels)


def test_unique_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for size in (0, 1, 2, 7, 300, 5000):
        values = rng.integers(0, 40, size).astype(np.int64)
        assert np.array_equal(sorted_unique(values), np.unique(values))


def test_union_of_broadcast_operands_joins_each_pair_once() -> None:
    space = LabelSpace()
    a, b = space.new_ids(3), space.new_ids(6).view(2, 3)
    space.union(emit(a, 1, (4, 3)).unsqueeze(0).expand(2, 4, 3), b.unsqueeze(1).expand(2, 4, 3))
    roots = space.find(torch.cat([a, b.reshape(-1)]))
    assert roots.tolist() == [1, 2, 3, 1, 2, 3, 1, 2, 3]


def test_fixed_shape_keeps_whole_what_meets_it() -> None:
    """One fresh block id, broadcast (no memory per element); channels joined with it are
    blocked for its reason, unlike NEUTRAL, which joins nothing."""
    space = LabelSpace()
    channels = space.new_ids(3)
    labels = fixed_shape(space, (2, 3), "a sum over all its channels")
    assert labels.shape == (2, 3) and labels.stride() == (0, 0)
    assert int(labels[0, 0]) != 0 and labels.unique().numel() == 1
    space.union(labels, emit(channels, 1, (2, 3)))
    blocked = space.blocked_roots()
    assert set(space.find(channels).tolist()) <= set(blocked)
    assert set(blocked.values()) == {"a sum over all its channels"}


@pytest.mark.parametrize("index", range(5))
def test_roots_match_find_then_unique(index: int) -> None:
    space = LabelSpace()
    ids = space.new_ids(30)
    space.union(ids[:10], ids[10:20])  # ten classes of two, ten of one
    labels = [ids[:20], ids.reshape(5, 6), emit(ids[5:25], 1, (3, 20, 4)),
              emit(ids, 0, (30, 1000)), ids[::3].reshape(1, 10).expand(7, 10)][index]
    want = space.find(labels).unique()
    got = space.roots(labels)
    assert torch.equal(got, want)
