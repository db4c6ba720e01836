"""Int attributes that a model's code turns into numbers (an attention scale
``1 / math.sqrt(self.d_k)``, ``x * self.item.embedding_dim ** 0.5``).

``prune`` rewrites the int attributes that size what it cuts (``d_k``, a layer's
``embedding_dim``), so such a number changes with them and the pruned model's outputs
change beyond the removed channels. Widths read from shapes are caught while tracing
(:mod:`prunekit.graph.sizes`); an attribute read is plain Python, so the source of the
model's classes is read instead: an attribute (``<anything>.name``) used as the argument of
a ``sqrt``/``float``/``log``, as the base or exponent of ``**``, or as an operand of ``/``,
in any method but ``__init__`` and weight initialisers (``_init_weights``,
``reset_parameters``: a number computed once at construction keeps its value).

The same reading finds the tensor attributes that the code re-binds after construction
(:func:`rebound_attributes`): :mod:`prunekit.graph.dependency` keeps whole the channels that
such a tensor alone makes.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterable

from torch import nn

__all__ = ["changed_attribute_numbers", "differentiates", "forward_reads",
           "gathered_from_own", "numeric_attribute_reads", "reads_training",
           "rebound_attributes"]

_NUMERIC_CALLS = frozenset(("sqrt", "rsqrt", "float", "log", "log2", "exp", "pow"))


_READS: dict[type, tuple[tuple[str, str], ...]] = {}  # per class, read once
_REBOUND: dict[type, tuple[tuple[str, str], ...]] = {}
_GRADS: dict[type, bool] = {}


def numeric_attribute_reads(cls: type) -> tuple[tuple[str, str], ...]:
    """(attribute name, "file:line") for each numeric use of an attribute in the methods
    of ``cls`` and its bases below ``nn.Module`` (``__init__`` aside); () where the source
    cannot be read."""
    done = _READS.get(cls)
    if done is None:
        done = _READS[cls] = _scan(cls, _numeric_reads)
    return done


def rebound_attributes(cls: type) -> tuple[tuple[str, str], ...]:
    """(attribute name, "file:line") for each ``self.<name> = ...``, ``setattr(self, "<name>",
    ...)`` and ``self.register_buffer("<name>", ...)`` in the methods of ``cls`` and its
    bases below ``nn.Module``, ``__init__`` aside: tensors the code remakes after
    construction (ConViT's ``self.rel_indices = self.get_rel_indices(N)``), at the sizes that
    code writes; () where the source cannot be read."""
    done = _REBOUND.get(cls)
    if done is None:
        done = _REBOUND[cls] = _scan(cls, _rebinds)
    return done


def differentiates(cls: type) -> bool:
    """Whether the ``forward`` of ``cls`` calls ``torch.autograd.grad``, ``.backward()`` or
    ``.requires_grad_()`` (not with False): a forward that makes its own leaf and
    differentiates by it (SIREN's ``coords.clone().detach().requires_grad_(True)``), which
    fails under the ``torch.no_grad()`` prunekit's forwards otherwise run in. (Other methods,
    a ``freeze()`` calling ``p.requires_grad_(False)``, do not count.)"""
    done = _GRADS.get(cls)
    if done is None:
        done = _GRADS[cls] = bool(_scan(cls, _grad_calls))
    return done


def reads_training(cls: type) -> bool:
    """Whether the ``forward`` of ``cls`` returns by ``self.training``: a ``return`` whose
    value reads it, or one inside an ``if`` whose test does (FlowNet's and PWC-Net's
    coarser flows, deep supervision: ``return (flow2, flow3) if self.training else
    flow2``): a model that may return more in training mode, tensors that eval mode only
    passes on. (A flag set by it, ``use_cache = False`` while checkpointing in training,
    or RWKV's rescaling of its weights when the mode changes, does not count; nor do other
    methods.)"""
    done = _TRAINING.get(cls)
    if done is None:
        done = _TRAINING[cls] = any(
            _returns_by_mode(method) for method, _, _ in _methods(cls)
            if getattr(method, "name", "") == "forward")
    return done


_TRAINING: dict[type, bool] = {}


def _returns_by_mode(function: ast.AST) -> bool:
    for node in ast.walk(function):
        if isinstance(node, ast.Return) and node.value is not None and \
                _reads_training(node.value):
            return True
        if isinstance(node, ast.If) and _reads_training(node.test) and any(
                isinstance(inner, ast.Return) for branch in (node.body, node.orelse)
                for statement in branch for inner in ast.walk(statement)):
            return True
    return False


def _reads_training(node: ast.AST) -> bool:
    return any(isinstance(leaf, ast.Attribute) and leaf.attr == "training"
               and _is_self(leaf.value) for leaf in ast.walk(node))


def forward_reads(cls: type) -> frozenset[str]:
    """The names of the attributes ``self.<name>`` that the ``forward`` of ``cls`` reads
    (empty where its source cannot be read)."""
    done = _FORWARD_READS.get(cls)
    if done is None:
        done = _FORWARD_READS[cls] = frozenset(
            node.attr for method, _, _ in _methods(cls)
            if getattr(method, "name", "") == "forward" for node in ast.walk(method)
            if isinstance(node, ast.Attribute) and _is_self(node.value))
    return done


_FORWARD_READS: dict[type, frozenset[str]] = {}


def _grad_calls(function: ast.AST) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or \
            function.name != "forward":
        return out
    for node in ast.walk(function):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name, owner = node.func.attr, node.func.value
        turned_off = name == "requires_grad_" and node.args and \
            isinstance(node.args[0], ast.Constant) and node.args[0].value is False
        by_autograd = name == "grad" and (
            (isinstance(owner, ast.Name) and owner.id == "autograd") or
            (isinstance(owner, ast.Attribute) and owner.attr == "autograd"))
        if (name in ("backward", "requires_grad_") and not turned_off) or by_autograd:
            out.append((name, node.lineno))
    return out


def _scan(cls: type, finder: Callable[[ast.AST], list[tuple[str, int]]]
          ) -> tuple[tuple[str, str], ...]:
    """``finder``'s (name, line) in every method ``cls`` runs, ``__init__`` aside, as
    (name, "file:line")."""
    found: list[tuple[str, str]] = []
    for method, path, start in _methods(cls):
        for name, line in finder(method):
            found.append((name, f"{path}:{start + line - 1}"))
    return tuple(dict.fromkeys(found))


_METHODS: dict[type, list[tuple[ast.AST, str, int]]] = {}  # per class, parsed once


def _methods(cls: type) -> list[tuple[ast.AST, str, int]]:
    """(method node, source file, first line of its class) of every method ``cls`` runs,
    ``__init__`` aside, from ``cls`` and its bases below ``nn.Module`` (where the source can
    be read)."""
    done = _METHODS.get(cls)
    if done is not None:
        return done
    done = _METHODS[cls] = []
    for klass in cls.__mro__:
        if klass is nn.Module or klass is object or klass.__module__.startswith("torch.nn"):
            continue
        try:
            lines, start = inspect.getsourcelines(klass)
            path = inspect.getsourcefile(klass) or "?"
        except (OSError, TypeError):
            continue
        try:
            tree = ast.parse(textwrap.dedent("".join(lines)))
        except SyntaxError:
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) \
            else []
        for method in body:  # the methods ``cls`` runs from this class (not overridden)
            if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    method.name != "__init__" and _defined_by(cls, method.name) is klass:
                done.append((method, path, start))
    return done


def _rebinds(function: ast.AST) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for node in ast.walk(function):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            if isinstance(node, ast.Assign) and gathered_from_own(node.value):
                continue  # (rebuilt at the width its pruned source has)
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out.extend((target.attr, target.lineno) for target in targets
                       if isinstance(target, ast.Attribute) and _is_self(target.value))
        elif isinstance(node, ast.Call) and node.args:
            func, args = node.func, node.args
            if isinstance(func, ast.Name) and func.id == "setattr" and len(args) > 1 and \
                    _is_self(args[0]):
                name = _string(args[1])
            elif isinstance(func, ast.Attribute) and func.attr == "register_buffer" and \
                    _is_self(func.value):
                name = _string(args[0])
            else:
                continue
            if name is not None:
                out.append((name, node.lineno))
    return out


def gathered_from_own(value: ast.expr | None) -> bool:
    """Whether ``value`` picks from a tensor of the module by whole slices and the module's
    own index tensors alone (EfficientFormer's and LeViT's ``self.ab =
    self.attention_biases[:, self.attention_bias_idxs]``, the bias cache ``train()``
    rebuilds): rebuilt after pruning, it has the width its pruned source has."""
    if not (isinstance(value, ast.Subscript) and isinstance(value.value, ast.Attribute)
            and _is_self(value.value.value)):
        return False
    index = value.slice
    parts = index.elts if isinstance(index, ast.Tuple) else [index]
    return all((isinstance(part, ast.Slice) and part.lower is part.upper is part.step is None)
               or (isinstance(part, ast.Attribute) and _is_self(part.value))
               or (isinstance(part, ast.Constant) and part.value in (None, Ellipsis))
               for part in parts)


def _string(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) \
        else None


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _defined_by(cls: type, name: str) -> type | None:
    return next((klass for klass in cls.__mro__ if name in vars(klass)), None)


def _numeric_reads(function: ast.AST) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    name = getattr(function, "name", "")
    if "init" in name or name.startswith("reset"):
        return out  # weight initialisation (``_init_weights``, ``reset_parameters``): its
        # numbers set the initial weights once, and forward does not call it
    for node in ast.walk(function):
        operands: list[ast.expr] = []
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else \
                func.id if isinstance(func, ast.Name) else ""
            if name in _NUMERIC_CALLS:
                operands = list(node.args)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.Div)):
            operands = [node.left, node.right]
        out.extend((operand.attr, operand.lineno) for operand in operands
                   if isinstance(operand, ast.Attribute))
    return out


def changed_attribute_numbers(before: nn.Module, after: nn.Module,
                              classes: Iterable[type]) -> list[str]:
    """Where the code of ``after``'s modules computes a number from an int attribute whose
    value differs from ``before``'s module at the same path ("file:line", one per place);
    ``classes``: those of ``before``'s modules (a swapped-in module reads no such number)."""
    places: list[str] = []
    if not any(numeric_attribute_reads(cls) for cls in classes):
        return places  # (most models: no walk by name)
    old = dict(before.named_modules())
    for path, module in after.named_modules():
        reads = numeric_attribute_reads(type(module))
        if not reads:
            continue
        was = old.get(path)
        if was is None:
            continue
        # the module's own attributes and its children's (self.d_k, self.item.embedding_dim)
        owners = {"": module, **dict(module.named_children())}
        olds = {"": was, **dict(was.named_children())}
        changed = set()
        for name, _ in reads:
            for key, owner in owners.items():
                new, prev = _int(getattr(owner, name, None)), \
                    _int(getattr(olds.get(key), name, None))
                if new is not None and prev is not None and new != prev:
                    changed.add(name)
        places.extend(where for name, where in reads if name in changed)
    return list(dict.fromkeys(places))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
