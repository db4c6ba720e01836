"""Which module's code made the op being traced: the ``self`` of the nearest calling frame
outside torch and prunekit.

The module whose ``forward`` is running (``ctx.running_module``) is not always the one whose
code made the call: a helper method of a child module, called by its parent
(``self.rel_pos.get_bias()`` in timm's relative-position attention), runs without a forward
hook, and reads *its own* attributes (``self.num_heads``). Handlers that match sizes written
in a call against a module's attributes look at the module that wrote the call, and at the
attributes the call's own expression reads (:func:`attributes_read`): of ``dim`` and
``dim_out`` holding 96, ``x.reshape(B, -1, self.dim_out)`` was sized by ``dim_out``. A
comparison is no call: :func:`comparison_read` finds what the comparing expression reads
(``num_channels != self.num_channels``) from the frame whose code runs it.
"""

from __future__ import annotations

import dis
import functools
import os
import sys
from types import CodeType, FrameType
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from prunekit.graph.trace import TraceContext

__all__ = ["attributes_read", "calling_module", "comparison_read"]

# torch's own frames (module call machinery, torch-function dispatch) and prunekit's (the
# package folders: not the folder that holds them, site-packages in an installed layout)
_SKIP = (os.path.dirname(torch.__file__) + os.sep,
         os.path.dirname(os.path.dirname(__file__)) + os.sep)

_COMPARE_OP = dis.opmap["COMPARE_OP"]  # ==, !=, <, ...: not ``in``, ``is`` (other opcodes)


def calling_module(ctx: TraceContext, frame: FrameType | None = None) -> tuple[str, nn.Module]:
    """``(path, module)`` of the traced model's module whose method made the current op
    (or runs ``frame``, where the caller has it), else the running module's."""
    if frame is None:
        frame = _user_frame()
    owner = frame.f_locals.get("self") if frame is not None else None
    if isinstance(owner, nn.Module) and owner is not ctx.running_module:
        for path, module in ctx._named_modules:
            if module is owner:
                return path, module
    return ctx.path, ctx.running_module


def attributes_read(ctx: TraceContext) -> frozenset[str]:
    """Names of the attributes that the expression of the current call reads, arguments
    included: ``{"transpose", "reshape", "out_dim"}`` for ``x.transpose(1, 2).reshape(B, N,
    self.out_dim)``. Empty where the call comes from no Python code. A size read in an
    earlier statement (``shape = (B, self.all_head_size); x.view(shape)``) is not in it."""
    frame = _user_frame()
    if frame is None:
        return frozenset()
    return _read_in_span(frame.f_code, frame.f_lasti)


def comparison_read(frame: FrameType) -> frozenset[str] | None:
    """For a comparison hook (``SizeInt.__eq__``) whose caller is ``frame``: the names of the
    attributes that the comparing expression reads (``{"num_channels"}`` for
    ``num_channels != self.num_channels``); None where ``frame`` is torch's or prunekit's, or
    is not at a comparison (a dict lookup, ``in``, ``list.index`` compare too)."""
    code = frame.f_code
    if code.co_filename.startswith(_SKIP):
        return None
    return _compare_read(code, frame.f_lasti)


@functools.lru_cache(maxsize=1024)
def _compare_read(code: CodeType, lasti: int) -> frozenset[str] | None:
    if code.co_code[lasti] != _COMPARE_OP:  # while an instruction runs, f_lasti is its own
        return None
    return _read_in_span(code, lasti)


def _user_frame() -> FrameType | None:
    """The nearest frame outside torch and prunekit (the code that made the op)."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP):
        frame = frame.f_back
    return frame


@functools.lru_cache(maxsize=4096)
def _read_in_span(code: CodeType, lasti: int) -> frozenset[str]:
    """Attribute loads whose source position lies inside that of the instruction at byte
    ``lasti`` (a call: its position spans the whole call expression). Python 3.10 keeps no
    columns: there, :func:`_read_before`."""
    loads = [ins for ins in dis.get_instructions(code)
             if ins.opname in ("LOAD_ATTR", "LOAD_METHOD")]
    if not hasattr(code, "co_positions"):  # Python 3.10
        return _read_before(code, lasti, {ins.offset: str(ins.argval) for ins in loads})
    positions = list(code.co_positions())
    span = positions[lasti // 2]
    if None in span:
        return frozenset()
    start, end = span[0::2], span[1::2]  # (line, column) of the first and last character
    return frozenset(str(ins.argval) for ins in loads
                     if None not in positions[ins.offset // 2]
                     and start <= positions[ins.offset // 2][0::2]
                     and positions[ins.offset // 2][1::2] <= end)


def _read_before(code: CodeType, lasti: int, loads: dict[int, str]) -> frozenset[str]:
    """Python 3.10: the loads (``{offset: name}``) that run just before the call at byte
    ``lasti`` on its line or later ones (its arguments: 3.10 puts a call on the line its
    expression starts on), back to the first instruction of an earlier line."""
    lines = {offset: line for begin, stop, line in code.co_lines()
             for offset in range(begin, stop, 2)}
    call_line = lines.get(lasti)
    if call_line is None:
        return frozenset()
    names = set()
    for offset in range(lasti - 2, -1, -2):
        line = lines.get(offset)
        if line is not None and line < call_line:
            break
        if offset in loads:
            names.add(loads[offset])
    return frozenset(names)
