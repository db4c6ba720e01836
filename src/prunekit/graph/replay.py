"""Sizes and branches that depend on tensor values, recorded by the trace and replayed by the
forward check.

A detector keeps the boxes that score above a threshold (``boxes[scores > t]``, NMS); a
model may branch on ``x.abs().max().item()``. Pruning changes the values, so the pruned
model may keep 44 boxes where the original kept 84: its output shapes differ for no fault
of the surgery. The trace therefore records what such calls gave, keyed by call site, and
the forward check runs the pruned model with the recorded values put back:

* calls that turn values into a Python value or an index tensor (``.item()``, ``bool(t)``,
  ``int(t)``, ``.tolist()``, ``.numpy()``, ``torch.equal``, ``nonzero``, ``argwhere``,
  one-argument ``where``, ``unique``, ``bincount``, any op named ``*nms``) return what they
  returned in the trace;
* boolean masks that select elements (``t[mask]``, ``t[mask] = v``, ``masked_select``) and
  tensor repeat counts (``repeat_interleave``) are swapped for the trace's masks and counts.

A recorded result is put back only where the call's tensor arguments have the shapes they
had in the trace (a mask over channels that pruning shrank is left alone), in the order the
call site made them. The check then compares shapes that only the surgery can change; the
pruned model itself runs on its own values.

A call site is the innermost frame outside torch's own code together with the frame that
called the op, each with the source position of its instruction: a call made inside a layer
that the trace does not enter (an atomic module) is never recorded, and its site differs
from every recorded one.

Values put back can disagree with the tensors the pruned model computes itself:
torchvision's ``paste_mask_in_image`` sizes a mask by ``int(box[2] - box[0])`` and slices
it by ``box``. Where the check fails inside a function that was given back a value its own
tensors no longer give, that function runs on its own values and the check is tried again
(:func:`replayed`).
"""

from __future__ import annotations

import copy
import functools
import os
import sys
from collections.abc import Callable, Collection
from types import CodeType, FrameType
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from prunekit._warn import last_user_traceback

__all__ = ["MISSING", "Record", "Recording", "Replay", "is_data_call", "replayed"]

T = torch.Tensor
# calls whose result is read from values (put back whole)
_RESULTS = frozenset((
    T.item, T.tolist, T.numpy, T.__bool__, T.__int__, T.__index__, T.__float__,
    T.__contains__, T.is_nonzero, T.equal, T.allclose, T.nonzero, T.argwhere, T.unique,
    T.unique_consecutive, T.bincount, torch.is_nonzero, torch.equal, torch.allclose,
    torch.nonzero, torch.argwhere, torch.unique, torch.unique_consecutive, torch.bincount,
))
# calls whose boolean mask / count arguments are put back
_REPEATS = frozenset((T.repeat_interleave, torch.repeat_interleave))
_MASKED = frozenset((T.__getitem__, T.__setitem__, T.masked_select, torch.masked_select,
                     *_REPEATS))
_WHERE = frozenset((T.where, torch.where))
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_T = TypeVar("_T")
MISSING = object()  # nothing recorded for a call (a recorded result may be None or False)

# (module path, outer code, its position, caller code, its position, func)
Site = tuple[str | None, Any, Any, Any, Any, Any]


def is_data_call(func: Any, args: tuple[Any, ...]) -> bool:
    """Whether ``func(*args)`` gives a result read from tensor values (see the module)."""
    try:
        if func in _RESULTS:
            return True
        if func in _MASKED:
            return bool(_swappable(func, args))
        if func in _WHERE:
            return len(args) == 1
    except TypeError:  # an unhashable callable
        return False
    # torchvision::nms, also as an overload (``nms.default``), as ops_reduce.BY_VALUE maps it
    return getattr(func, "__name__", "").split(".")[0].endswith("nms")


def _swappable(func: Any, args: tuple[Any, ...]) -> list[tuple[int, int | None]]:
    """(argument, item of a tuple index or None) of each bool mask among the call's
    arguments, or of a ``repeat_interleave``'s tensor of counts."""
    if func in _REPEATS:
        counts = args[1] if len(args) > 1 else None
        return [(1, None)] if isinstance(counts, Tensor) and counts.dim() == 1 else []
    found: list[tuple[int, int | None]] = []
    for i, arg in enumerate(args[1:], start=1):
        if isinstance(arg, Tensor) and arg.dtype == torch.bool:
            found.append((i, None))
        elif isinstance(arg, tuple) and i == 1:  # t[a, mask]
            found.extend((i, j) for j, item in enumerate(arg)
                         if isinstance(item, Tensor) and item.dtype == torch.bool)
    return found


def _site(func: Any, frame: FrameType | None, paths: Callable[[], dict[int, str]]) -> Site:
    """Where ``func`` was called from: the innermost frame outside torch's code, the module
    whose method that is (by path, so that a copy of the model has the same sites and a
    block left out shifts no other block's calls), and the op's own caller."""
    caller = frame
    while frame is not None and frame.f_code.co_filename.startswith(_TORCH_DIR):
        frame = frame.f_back
    outer = frame if frame is not None else caller
    if outer is None or caller is None:
        return (None, None, -1, None, -1, func)
    owner = outer.f_locals.get("self") if "self" in outer.f_code.co_varnames else None
    return (paths().get(id(owner)), outer.f_code, _position(outer.f_code, outer.f_lasti),
            caller.f_code, _position(caller.f_code, caller.f_lasti), func)


@functools.lru_cache(maxsize=4096)
def _position(code: CodeType, lasti: int) -> Any:
    """Where in the source the instruction at byte ``lasti`` of ``code`` is, (line, end line,
    column, end column): the same for every instruction of one call expression. The byte
    is not: Python 3.11's specialising interpreter makes a call in its PRECALL instruction
    once the call site is warm and in CALL before, so the first runs of a loop and the later
    ones (the forward check, after the trace warmed the code) would be different sites.
    Python 3.10 keeps no columns: there, the byte."""
    positions = getattr(code, "co_positions", None)
    if positions is None or lasti < 0:
        return lasti
    for i, position in enumerate(positions()):
        if i == lasti // 2:
            return position
    return lasti


def _signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The shapes of the call's tensor arguments (one level into tuples and lists)."""
    out: list[Any] = []
    for value in (*args, *kwargs.values()):
        items = value if isinstance(value, (tuple, list)) else (value,)
        out.extend(tuple(v.shape) for v in items if isinstance(v, Tensor))
    return tuple(out)


def _snapshot(value: Any) -> Any:
    """A copy of a recorded result that later in-place ops of the model cannot change."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_snapshot(v) for v in value)
    return copy.deepcopy(value)


def _paths_of(model: nn.Module) -> Callable[[], dict[int, str]]:
    """``{id(module): path}`` of ``model``, worked out when first asked for."""
    found: dict[int, str] = {}

    def paths() -> dict[int, str]:
        if not found:
            found.update((id(m), n) for n, m in model.named_modules(remove_duplicate=False))
        return found

    return paths


class Recording:
    """What the data-dependent calls of one forward of ``model`` gave, per call site, in
    order."""

    def __init__(self, model: nn.Module) -> None:
        self._calls: dict[Site, list[tuple[tuple[Any, ...], Any]]] = {}
        self._paths = _paths_of(model)

    def __bool__(self) -> bool:
        return bool(self._calls)

    def __len__(self) -> int:
        return sum(len(v) for v in self._calls.values())

    def record(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any,
               frame: FrameType | None) -> None:
        """Keep ``out`` (or the call's masks) under the site of ``frame``, the op's caller.
        A result that cannot be copied is not kept: the check then runs that call itself."""
        try:
            if func in _MASKED:
                kept: Any = [(i, j, _snapshot(args[i] if j is None else args[i][j]))
                             for i, j in _swappable(func, args)]
            else:
                kept = _snapshot(out)
        except Exception:  # (a user type's deepcopy that raises)
            return
        site = _site(func, frame, self._paths)
        self._calls.setdefault(site, []).append((_signature(args, kwargs), kept))

    def replayer(self, model: nn.Module, live: Collection[CodeType] = ()) -> Callable[
            [Any, tuple[Any, ...], dict[str, Any], FrameType | None], tuple[Any, Any]]:
        """For a run of ``model`` (a pruned copy of the recorded one): a function of (func,
        args, kwargs, caller frame) -> (what was kept for that call (its result, or its
        masks as (argument, tuple item, mask)) or ``MISSING``, the code that made the
        call); it keeps its own position in each site's list. Calls made by the code in
        ``live`` get ``MISSING``: they run on the model's own values."""
        cursors: dict[Site, int] = {}
        calls, paths = self._calls, _paths_of(model)

        def replay(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                   frame: FrameType | None) -> tuple[Any, Any]:
            site = _site(func, frame, paths)
            entries = calls.get(site)
            at = cursors.get(site, 0)
            if entries is None or at >= len(entries) or site[1] in live or \
                    entries[at][0] != _signature(args, kwargs):
                return MISSING, site[1]
            cursors[site] = at + 1
            return entries[at][1], site[1]

        return replay


def _with_masks(args: tuple[Any, ...], masks: list[tuple[int, int | None, Tensor]]
                ) -> tuple[Any, ...]:
    """``args`` with each recorded mask put at its (argument, tuple item)."""
    new = list(args)
    for i, j, mask in masks:
        if j is None:
            new[i] = mask
        else:
            new[i] = tuple(mask if k == j else item for k, item in enumerate(new[i]))
    return tuple(new)


class Record(TorchFunctionMode):
    """Keeps the data-dependent calls of a forward of ``model`` in ``self.recording`` (a
    trace does this itself; this is for a plain reference run)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.recording = Recording(model)

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if is_data_call(func, args):
            self.recording.record(func, tuple(args), kwargs, out, sys._getframe(1))
        return out


class Replay(TorchFunctionMode):
    """Runs ``model``, a pruned copy of the model ``recording`` saw, with the recorded values
    put back (see the module), except in the functions whose code is in ``live``.
    ``diverged`` collects the code of the calls whose recorded value differs from the one
    the model's own tensors give."""

    def __init__(self, recording: Recording, model: nn.Module,
                 live: Collection[CodeType] = ()) -> None:
        super().__init__()
        self._replay = recording.replayer(model, live)
        self.diverged: set[Any] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if is_data_call(func, args):
            kept, code = self._replay(func, tuple(args), kwargs, sys._getframe(1))
            if kept is not MISSING:
                if func in _MASKED:
                    if not all(_same(mask, args[i] if j is None else args[i][j])
                               for i, j, mask in kept):
                        self.diverged.add(code)
                    args = _with_masks(tuple(args), kept)
                else:
                    if not _same(kept, func(*args, **kwargs)):
                        self.diverged.add(code)
                    return _snapshot(kept)
        return func(*args, **kwargs)


def _same(kept: Any, value: Any) -> bool:
    """Whether a recorded value equals what the model's own tensors give now."""
    if isinstance(kept, Tensor):
        return isinstance(value, Tensor) and kept.shape == value.shape and \
            bool(torch.equal(kept, value.detach()))
    if isinstance(kept, (tuple, list)):
        return isinstance(value, (tuple, list)) and len(kept) == len(value) and \
            all(_same(a, b) for a, b in zip(kept, value, strict=True))
    try:
        return bool(kept == value)
    except Exception:  # (an array, a user type)
        return False


def replayed(recording: Recording, model: nn.Module, run: Callable[[], _T]) -> _T:
    """``run()``, a forward of ``model``, under :class:`Replay`. Where it raises in a
    function whose recorded values differ from the ones its own tensors now give, that
    function's calls run on the model's values and ``run()`` is tried again: torchvision's
    ``paste_mask_in_image`` sizes a mask by ``int(box[2] - box[0])``, put back from the
    trace, and slices it by the pruned model's own ``box``; the two no longer agree, for
    no fault of the surgery. A function that fails where every value it was given back
    agrees with its own raises as it did."""
    live: set[Any] = set()
    while True:
        mode = Replay(recording, model, live)
        try:
            with mode:
                return run()
        except Exception as exc:
            raised = last_user_traceback(exc)  # (the user's function it came from)
            code = None if raised is None else raised.tb_frame.f_code
            if code is None or code in live or code not in mode.diverged:
                raise
            live.add(code)
