"""Fast paths of building dependency groups (NumPy unique, parameter axes) give exactly
what the torch computations they replaced give."""

from __future__ import annotations

import math

import numpy as np
import torch

from prunekit.graph.dependency import (
    _param_axis,
    _param_member,
    _unique_first,
)
from prunekit.graph.labels import LabelSpace
from prunekit.graph.trace import ParamRecord, Trace


def test_unique_first_equals_numpy_unique() -> None:
    rng = np.random.default_rng(0)
    for size in (1, 2, 7, 100, 1000):
        for high in (1, 3, 50, 10_000):
            values = rng.integers(0, high, size, dtype=np.int64)
            want = np.unique(values, return_index=True, return_inverse=True)
            for got, expected in zip(_unique_first(values), want, strict=True):
                assert np.array_equal(got, expected.reshape(-1))


def _reference_axis(units: torch.Tensor, read: torch.Tensor) -> int | None:
    """The torch computation _param_axis did before it moved to NumPy (axis test only)."""
    for axis in range(units.dim()):
        if units.shape[axis] <= 1:
            continue
        flat = units.movedim(axis, 0).reshape(units.shape[axis], -1)
        seen = read.movedim(axis, 0).reshape(units.shape[axis], -1)
        first = torch.where(seen, flat, torch.full_like(flat, -1)).amax(1, keepdim=True)
        if bool(((flat == first) | ~seen).all()):
            return axis
    return None


def _reference_member_units(units: torch.Tensor, read: torch.Tensor, axis: int) -> torch.Tensor:
    flat = units.movedim(axis, 0).reshape(units.shape[axis], -1)
    seen = read.movedim(axis, 0).reshape(units.shape[axis], -1)
    per_index = torch.where(seen, flat, torch.zeros_like(flat)).amax(1)
    return torch.where(seen.any(1), per_index, flat[:, 0])


def test_param_axis_numpy_equals_torch() -> None:
    generator = torch.Generator().manual_seed(0)
    space = LabelSpace()
    checked, blocked = 0, 0
    layouts = [(shape, along) for shape in [(1, 5, 8), (4, 6), (3, 1, 2), (7,), (2, 3, 4)]
               for along in (None, *range(len(shape)))]
    for shape, along in layouts:
        ids = space.new_ids(math.prod(shape)).reshape(shape)
        if along is not None:  # join all elements of each index along ``along``
            others = tuple(d for d in range(len(shape)) if d != along)
            if others:
                space.union(ids, ids.amax(dim=others, keepdim=True).expand(shape))
        for selected in (None, torch.rand(shape, generator=generator) > 0.3,
                         torch.zeros(shape, dtype=torch.bool)):
            param = ParamRecord("p", torch.zeros(shape), ids, selected=selected)
            units = space.find(ids)
            read = selected if selected is not None else torch.ones(shape, dtype=torch.bool)
            want = _reference_axis(units, read)
            trace = Trace(space, {}, {"p": param}, [])
            assert _param_axis(trace, param) == want
            blocked += want is None
            if want is not None:
                got = _param_member(trace, param, want).units
                assert torch.equal(got, _reference_member_units(units, read, want))
                checked += 1
    assert checked > 0 and blocked > 0
