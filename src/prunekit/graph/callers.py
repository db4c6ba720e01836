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

import ast
import dis
import functools
import inspect
import linecache
import os
import sys
import textwrap
import types
from collections.abc import Iterable
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunekit._warn import NOT_USER_CODE, first_user_frame
from prunekit.graph.numbers import gathered_from_own

if TYPE_CHECKING:
    from prunekit.graph.trace import TraceContext

__all__ = [
    "arguments_written",
    "assigned_reads",
    "attributes_by_argument",
    "attributes_read",
    "calling_module",
    "comparison_read",
    "literals_written",
    "products_written",
    "rebuilt_attribute",
    "size_read_elsewhere",
    "sizes_written",
    "user_line",
]


_TORCH_MODULES = os.path.join(os.path.dirname(torch.__file__), "nn", "modules") + os.sep

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
    earlier statement (``shape = (B, self.all_head_size); x.view(shape)``) is not in it:
    :func:`assigned_reads` finds those."""
    frame = _user_frame()
    return frozenset() if frame is None else _in_span(frame.f_code, frame.f_lasti)[0]


def assigned_reads(ctx: TraceContext) -> frozenset[str]:
    """Names of the attributes read where the local names that the current call passes as
    arguments were last assigned before it in the same function: ``{"nf"}`` for GPT-2's
    ``size_out = x.size()[:-1] + (self.nf,)`` then ``x.view(size_out)``. (The tensor the
    call is made on is no argument.) Empty where the source cannot be read."""
    frame = _user_frame()
    if frame is None:
        return frozenset()
    names = _arguments_at(frame.f_code, frame.f_lasti, names=True)
    if not names:
        return frozenset()
    return _assigned_reads(frame.f_code, frame.f_lineno, names)


@functools.lru_cache(maxsize=1024)
def _assigned_reads(code: CodeType, line: int, names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(leaf.attr for value in _last_assignments(code, line, names).values()
                     for leaf in ast.walk(value) if isinstance(leaf, ast.Attribute))


def _last_assignments(code: CodeType, line: int, names: tuple[str, ...]
                      ) -> dict[str, ast.expr]:
    """For each of ``names`` assigned once in the function of ``code``, by a plain
    assignment (``name = ...``) on a line before ``line``, its value; names assigned
    otherwise (a loop, a tuple target) or in several places (each branch of an ``if``: which
    one ran is unknown) are left out. Empty where the source cannot be read."""
    if not names:
        return {}
    assigns = _assignments(code)
    counts: dict[str, int] = {}
    for _, target, _ in assigns:
        counts[target] = counts.get(target, 0) + 1
    return {target: value for at, target, value in assigns
            if target in names and counts[target] == 1 and at < line}


@functools.lru_cache(maxsize=256)
def _assignments(code: CodeType) -> tuple[tuple[int, str, ast.expr], ...]:
    """(line, name, value) of every ``name = value`` in the function of ``code``, by line."""
    try:
        lines, start = inspect.getsourcelines(code)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):
        return ()
    found = [(node.lineno + start - 1, target.id, node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Assign) for target in node.targets
             if isinstance(target, ast.Name)]
    return tuple(sorted(found, key=lambda item: item[0]))


def literals_written(ctx: TraceContext) -> frozenset[int]:
    """The int literals in the expression of the current call (``{2, 4}`` for
    ``x.view(x.shape[:-1] + (2, 4))``): a size written there is not an attribute's."""
    frame = _user_frame()
    return frozenset() if frame is None else _in_span(frame.f_code, frame.f_lasti)[1]


def arguments_written(ctx: TraceContext) -> tuple[str | int | None, ...] | None:
    """What the current call writes for each of its positional arguments, read from its
    source: an attribute's name for ``self.num_heads`` (any ``obj.attr``), an int for a
    literal (``3``, ``-1``), None for anything else; the elements of a lone tuple or list
    argument (``view((B, N, 3, self.num_heads, -1))``, ``torch.reshape(x, (...))``) stand
    for the arguments. None where the source cannot be read or the call unpacks ``*args``.
    ``reshape(B, N, 3, self.num_heads, -1)`` gives ``(None, None, 3, "num_heads", -1)``:
    which factor the head count sizes where it equals the literal 3."""
    frame = _user_frame()
    written = None if frame is None else _arguments_at(frame.f_code, frame.f_lasti)
    return None if written is None else tuple(
        w[1] if isinstance(w, tuple) else w for w in written)


def sizes_written(module: nn.Module
                  ) -> tuple[str | int | tuple[str, ...] | None, ...] | None:
    """Like :func:`arguments_written`, for the elements of the call's first size argument
    when it is a list or tuple written in the call, whatever follows it: ``("intermediate_size",
    "conv_dim", "num_heads")`` for Mamba2's ``x.split([self.intermediate_size,
    self.conv_dim, self.num_heads], dim=-1)``, and a tuple of names for a product of
    attributes (``("n_groups", "ssm_state_size")`` for ``self.n_groups *
    self.ssm_state_size``). An attribute counts only where what it is read from is
    ``module`` (``self`` or another name for it; ``config.hidden_size`` is None). None where
    that argument is not written so."""
    frame = _user_frame()
    if frame is None:
        return None
    written = _arguments_at(frame.f_code, frame.f_lasti, True)
    if written is None:
        return None
    names = {**frame.f_globals, **frame.f_locals}

    def own(pair: tuple[str | None, str]) -> str | None:
        return pair[1] if pair[0] is not None and names.get(pair[0]) is module else None

    def read(w: Any) -> str | int | tuple[str, ...] | None:
        if not isinstance(w, tuple):
            return w
        if w[0] != "*":
            return own(w)
        factors = tuple(own(pair) for pair in w[1:])
        return None if None in factors else factors  # type: ignore[return-value]

    return tuple(read(w) for w in written)


def products_written(ctx: TraceContext) -> tuple[Any, ...] | None:
    """Like :func:`arguments_written`, with a product of attribute reads (``self.num_fields *
    self.embed_dim``) given as ``("*", (owner, "num_fields"), (owner, "embed_dim"))``."""
    frame = _user_frame()
    return None if frame is None else _arguments_at(frame.f_code, frame.f_lasti,
                                                    products=True)


def attributes_by_argument(ctx: TraceContext) -> tuple[frozenset[str], ...] | None:
    """For each positional argument of the current call (the elements of a lone tuple or
    list argument, as :func:`arguments_written` counts them), the names of the attributes
    its expression reads: ``({"out_planes", "mid_planes"}, {"mid_planes"})`` for
    ``view(self.out_planes // self.mid_planes, self.mid_planes)``. None where the source
    cannot be read."""
    frame = _user_frame()
    return None if frame is None else _arguments_at(frame.f_code, frame.f_lasti, reads=True)


_FACTORIES = frozenset(("zeros", "ones", "empty", "full", "rand", "randn"))  # sizes first


@functools.lru_cache(maxsize=1024)
def _arguments_at(code: CodeType, lasti: int, first: bool = False, reads: bool = False,
                  products: bool = False, names: bool = False) -> tuple[Any, ...] | None:
    """What the call at ``lasti`` writes for each positional argument (``first``: for each
    element of its first argument, a list or tuple), as :func:`_written` reads it
    (``products``: and products of attribute reads, as :func:`_product` does; ``reads``:
    the attribute names its expression reads; ``names``: the local names passed whole)."""
    if not hasattr(code, "co_positions"):  # Python 3.10 keeps no columns
        return None
    line, end_line, col, end_col = list(code.co_positions())[lasti // 2]
    if None in (line, end_line, col, end_col):
        return None
    lines = linecache.getlines(code.co_filename)[line - 1:end_line]
    if not lines:
        return None
    lines[-1] = lines[-1].encode()[:end_col].decode(errors="ignore")
    lines[0] = lines[0].encode()[col:].decode(errors="ignore")
    try:
        tree = ast.parse("(" + "".join(lines) + ")", mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.Call):
        return None
    args = tree.args
    func = tree.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
            func.value.id == "torch" and func.attr not in _FACTORIES:
        args = args[1:]  # torch.reshape(x, shape): the tensor is no size
    if names:  # (view(*shape) passes shape whole too)
        return tuple(arg.id for arg in (a.value if isinstance(a, ast.Starred) else a
                                        for a in args) if isinstance(arg, ast.Name))
    if any(isinstance(a, ast.Starred) for a in tree.args):
        return None
    if first:  # (torch.split(x, split_size_or_sections=[...]) names it)
        args = args[:1] or [kw.value for kw in tree.keywords if kw.arg in _SIZE_KEYWORDS][:1]
        if not args or not isinstance(args[0], (ast.Tuple, ast.List)):
            return None
    if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
        args = args[0].elts
        if any(isinstance(a, ast.Starred) for a in args):
            return None
    if reads:
        return tuple(frozenset(node.attr for node in ast.walk(arg)
                               if isinstance(node, ast.Attribute)) for arg in args)
    # a local that holds an attribute read (RAFT's hdim = self.hidden_dim; split(x, [hdim,
    # cdim], 1)) is written as that attribute
    assigned = _last_assignments(code, line, tuple(a.id for a in args if isinstance(a, ast.Name)))
    args = [assigned.get(a.id, a) if isinstance(a, ast.Name) else a for a in args]
    return tuple(_product(arg) if first or products else _written(arg) for arg in args)


_SIZE_KEYWORDS = ("split_size_or_sections", "split_size", "split_sizes", "sections",
                  "indices_or_sections", "shape", "size")


def _product(node: ast.expr) -> Any:
    """:func:`_written`, and for a product of attribute reads (``self.n_groups *
    self.state_size``) ``("*", (owner, name), ...)``, one pair per factor."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        factors = [_product(node.left), _product(node.right)]
        flat = [f for factor in factors
                for f in (factor[1:] if isinstance(factor, tuple) and factor[0] == "*"
                          else (factor,))]
        if all(isinstance(f, tuple) and f[0] != "*" for f in flat):
            return ("*", *flat)
        return None
    return _written(node)


def _written(node: ast.expr) -> tuple[str | None, str] | int | None:
    """``(owner, name)`` for an attribute read (``("self", "width")``; owner None where it is
    not a plain name: ``self.cfg.width``), an int for a literal, None for anything else."""
    if isinstance(node, ast.Attribute):
        return (node.value.id if isinstance(node.value, ast.Name) else None, node.attr)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _written(node.operand)
        return -value if type(value) is int else None
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def comparison_read(frame: FrameType) -> frozenset[str] | None:
    """For a comparison hook (``SizeInt.__eq__``) whose caller is ``frame``: the names of the
    attributes that the comparing expression reads (``{"num_channels"}`` for
    ``num_channels != self.num_channels``); None where ``frame`` is torch's or prunekit's, or
    is not at a comparison (a dict lookup, ``in``, ``list.index`` compare too); the forwards
    of ``torch.nn``'s modules count as user code."""
    code = frame.f_code
    # (torch's own modules are code like the user's: nn.Transformer's
    # ``src.size(-1) != self.d_model``)
    filename = code.co_filename
    if filename.startswith(NOT_USER_CODE) and not filename.startswith(_TORCH_MODULES):
        return None
    return _compare_read(code, frame.f_lasti)


@functools.lru_cache(maxsize=1024)
def _compare_read(code: CodeType, lasti: int) -> frozenset[str] | None:
    if code.co_code[lasti] != _COMPARE_OP:  # while an instruction runs, f_lasti is its own
        return None
    return _in_span(code, lasti)[0]


def user_line() -> str | None:
    """``"file.py:42"``, the line of the user's code that is running (the nearest frame
    outside torch and prunekit); None where there is none."""
    frame = _user_frame()
    return None if frame is None else \
        f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def _user_frame() -> FrameType | None:
    """The nearest frame outside torch and prunekit (the code that made the op)."""
    return first_user_frame(sys._getframe(2))[0]


@functools.lru_cache(maxsize=4096)
def _in_span(code: CodeType, lasti: int) -> tuple[frozenset[str], frozenset[int]]:
    """The attribute names and int constants loaded at source positions inside that of the
    instruction at byte ``lasti`` (a call: its position spans the whole call expression)."""
    return _split(_span_loads(code, lasti, ("LOAD_ATTR", "LOAD_METHOD", "LOAD_CONST",
                                            "LOAD_SMALL_INT")))


def _span_loads(code: CodeType, lasti: int, opnames: tuple[str, ...]) -> list[Any]:
    """The values that instructions ``opnames`` load at source positions inside that of the
    instruction at byte ``lasti``. Python 3.10 keeps no columns: there,
    :func:`_loaded_before`."""
    loads = {ins.offset: ins.argval for ins in dis.get_instructions(code)
             if ins.opname in opnames}
    if not hasattr(code, "co_positions"):  # Python 3.10
        return _loaded_before(code, lasti, loads)
    positions = list(code.co_positions())
    span = positions[lasti // 2]
    if None in span:
        return []
    start, end = span[0::2], span[1::2]  # (line, column) of the first and last character
    return [value for offset, value in loads.items()
            if None not in positions[offset // 2]
            and start <= positions[offset // 2][0::2]
            and positions[offset // 2][1::2] <= end]


def size_read_elsewhere(ctx: TraceContext, size: int) -> str | None:
    """Where the expression of the current call reads ``size`` from something that is not
    an int attribute of the module running it: a config object or dict the module holds
    (``self.config.num_attention_heads``, ``self.cfg["n_heads"]``), an element of a list or
    tuple attribute (megvii ShuffleNetV2's ``self.stage_out_channels[-1]``) or a global
    constant (``N_HEAD``); None if it reads none. An int attribute of the same value that
    the call does not read is then not its size (prune would rewrite a number nothing
    uses)."""
    frame = _user_frame()
    if frame is None:
        return None
    names, _ = _in_span(frame.f_code, frame.f_lasti)
    owner = calling_module(ctx, frame)[1]
    found = [(g, frame.f_globals[g]) for g in _globals_in_span(frame.f_code, frame.f_lasti)
             if g in frame.f_globals]
    found += [(n, owner.__dict__[n]) for n in names  # (its own ints are what is not elsewhere)
              if n in owner.__dict__ and type(owner.__dict__[n]) is not int]
    for name, value in found:
        if type(value) is int:
            if value == size:
                return name
            continue
        if isinstance(value, (list, tuple)):  # an element: self.stage_out_channels[-1]
            if any(type(v) is int and v == size for v in value):
                return f"{name}[...]"
            continue
        if isinstance(value, (nn.Module, torch.Tensor, types.ModuleType, type)) or \
                callable(value):
            continue
        for key in names:
            held = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
            if type(held) is int and held == size:
                return f"{name}[{key!r}]" if isinstance(value, dict) else f"{name}.{key}"
    return None


@functools.lru_cache(maxsize=4096)
def _globals_in_span(code: CodeType, lasti: int) -> tuple[str, ...]:
    return tuple(name for name in _span_loads(code, lasti, ("LOAD_GLOBAL", "LOAD_NAME"))
                 if isinstance(name, str))


def _split(values: Iterable[Any]) -> tuple[frozenset[str], frozenset[int]]:
    """(attribute names, ints) of loaded values: a name is a str, a constant an int or a
    tuple of them (``(2, 4)`` is one constant)."""
    names, ints = set(), set()
    for value in values:
        if isinstance(value, str):
            names.add(value)
        for item in value if isinstance(value, tuple) else (value,):
            if type(item) is int:
                ints.add(item)
    return frozenset(names), frozenset(ints)


def _loaded_before(code: CodeType, lasti: int, loads: dict[int, Any]) -> list[Any]:
    """Python 3.10: the values of the loads (``{offset: value}``) that run just before the
    call at byte ``lasti`` on its line or later ones (its arguments: 3.10 puts a call on the
    line its expression starts on), back to the first instruction of an earlier line."""
    lines = {offset: line for begin, stop, line in code.co_lines()
             for offset in range(begin, stop, 2)}
    call_line = lines.get(lasti)
    if call_line is None:
        return []
    values = []
    for offset in range(lasti - 2, -1, -2):
        line = lines.get(offset)
        if line is not None and line < call_line:
            break
        if offset in loads:
            values.append(loads[offset])
    return values


def rebuilt_attribute(cls: type, attr: str) -> bool:
    """Whether a method of ``cls`` (or of a base class outside torch) other than
    ``__init__`` assigns ``self.<attr>``: a cache the module rebuilds as it runs (ESPnet's
    ``extend_pe`` grows ``self.pe`` for a longer input; rotary ``_set_cos_sin_cache``)."""
    key = (cls, attr)
    found = _REBUILT.get(key)
    if found is None:
        found = _REBUILT[key] = _assigned_outside_init(cls, attr)
    return found


_REBUILT: dict[tuple[type, str], bool] = {}


def _assigned_outside_init(cls: type, attr: str) -> bool:
    for klass in cls.__mro__:
        if klass.__module__.startswith("torch") or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.name != "__init__" and _assigns(node, attr):
                return True
    return False


def _assigns(function: ast.AST, attr: str) -> bool:
    """Whether ``function`` assigns ``self.<attr>`` (plain, augmented or annotated), other
    than by picking from the module's own tensors (EfficientFormer's ``self.ab =
    self.attention_biases[:, self.attention_bias_idxs]``, which comes back at the pruned
    width: :func:`~prunekit.graph.numbers.gathered_from_own`)."""
    for node in ast.walk(function):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign) and not gathered_from_own(node.value):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Attribute) and leaf.attr == attr and \
                        isinstance(leaf.value, ast.Name) and leaf.value.id == "self":
                    return True
    return False
