"""How a trace sees the model run: module hooks that track the running module, and the
torch-function mode that hands every other op to the recorder.

Modules with a handler are *atomic*: while one runs, the mode is taken off the
torch-function stack, so neither its inner ops nor its handler's label arithmetic are
recorded as ops of the model.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from prunekit.errors import UnsupportedOpError
from prunekit.graph.records import ModuleCall, ModuleHandler
from prunekit.graph.replay import Recording, is_data_call
from prunekit.graph.writes import WriteGuard

__all__ = ["FUNC_TRANSFORM", "CallStack", "Recorder"]

FUNC_TRANSFORM = (
    "the forward runs ops on tensors without storage, which the trace cannot read: a "
    "torch.func transform (vmap, jacrev, grad) or a fake/meta "
    "tensor; compute the derivative with torch.autograd.grad (which prunekit maps), "
    "batch with the layers' own batch dim, or prune a model whose forward does not call "
    "the transform")
_WRAPPED = torch._C._functorch.is_functorch_wrapped_tensor  # vmap's and grad's tensors

OnModule = Callable[[ModuleHandler, ModuleCall], None]
OnOp = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any], Any], None]
OnSize = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any], Any], Any]
_SIZE = torch.Tensor.size
_BATCH_NORM = torch.nn.functional.batch_norm  # (they write their running statistics)
_INSTANCE_NORM = torch.nn.functional.instance_norm
_NUMEL = torch.Tensor.numel


def _empty_tensors_only(args: Any) -> bool:
    """True if the positional arguments hold tensors and every one is empty (read with
    torch functions off, so the recorder takes no shape read)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    with torch._C.DisableTorchFunction():
        return bool(tensors) and all(t.numel() == 0 for t in tensors)


class CallStack:
    """The modules whose forward is running (innermost last), and whether ops are recorded
    now: not while an atomic module runs."""

    def __init__(self, model: nn.Module) -> None:
        self.paths: list[str] = []  # dotted paths; the model itself has none
        # the path of every module whose forward ran on something: not on empty tensors only
        self.entered: set[str] = set()
        self.modules: list[nn.Module] = [model]
        self.atomic_depth = 0  # > 0 while an atomic module (a layer adapter's) runs
        self.mode: TorchFunctionMode | None = None  # the recorder, once it runs
        self._suspended: list[bool] = []

    @property
    def recording(self) -> bool:
        """False while an atomic module runs (its inner ops are not recorded)."""
        return self.atomic_depth == 0

    @contextlib.contextmanager
    def hooks(self, named_modules: Iterable[tuple[str, nn.Module]],
              lookup: Callable[[nn.Module], ModuleHandler | None],
              on_module: OnModule) -> Iterator[None]:
        """Path-tracking hooks on every module; ``on_module(handler, call)`` after each call
        of a module with a handler (none around it).

        Two process-wide module hooks serve every module of ``named_modules`` (registering
        two hooks per module costs more than the rest of a small model's trace); a module
        that has forward hooks of its own gets hooks of its own instead: its pre-hook after
        the user's (which run traced, on the inputs, as code before the call would) and its
        post-hook before the user's (which then run traced too: a hook that zeroes units 3
        and 7 of a layer's output, or scales it by a parameter, is seen as such). The
        process-wide hooks pass over modules of other models; calling the traced model from
        another thread while the trace runs is not supported."""
        atomic_stack: list[bool] = []
        stack = self
        shared: dict[int, tuple[str, ModuleHandler | None]] = {}  # the process-wide hooks'
        own: dict[int, tuple[str, ModuleHandler | None]] = {}  # modules with hooks of theirs
        handles: list[Any] = []

        def hook_pair(entries: dict[int, tuple[str, ModuleHandler | None]]) -> tuple[
                Callable[..., None], Callable[..., None]]:
            """A (pre, post) pair of forward hooks for the modules in ``entries``; both take
            the arguments of either registration (``with_kwargs`` or not)."""

            def pre(mod: nn.Module, args: Any, *_kwargs: Any) -> None:
                entry = entries.get(id(mod))
                if entry is None:
                    return
                if args and args[0].__class__ is Tensor and _WRAPPED(args[0]):
                    # a layer run inside torch.func.vmap: the trace sees one sample, and
                    # what the transform stacks back up would be cut as an inner tensor
                    raise UnsupportedOpError(FUNC_TRANSFORM)
                stack.paths.append(entry[0])
                if not _empty_tensors_only(args):
                    stack.entered.add(entry[0])  # (a call on empty tensors only couples
                    # nothing: an expert no token reached, run on an empty batch)
                stack.modules.append(mod)
                # none around it; and the layer's own parameters in place: under
                # torch.func.functional_call a slot may hold a computed tensor (W + delta),
                # which the layer's forward then runs traced, as F.linear(x, W + delta)
                atomic = entry[1] is not None and stack.atomic_depth == 0 and \
                    all(p is None or p.__class__ is not Tensor for p in mod._parameters.values())
                atomic_stack.append(atomic)
                if atomic:
                    stack.atomic_depth += 1
                    stack.suspend()

            def post(mod: nn.Module, args: Any, *rest: Any) -> None:
                entry = entries.get(id(mod))
                if entry is None:
                    return
                stack.paths.pop()
                stack.modules.pop()
                if not atomic_stack.pop():
                    return
                # still "inside" the module: the handler's own label arithmetic must not be
                # recorded as ops of the model
                try:
                    # rest is (kwargs, out), or (out,) for a process-wide always-call hook
                    # of a forward that raised: then nothing is recorded
                    if len(rest) == 2:
                        on_module(entry[1],  # type: ignore[arg-type]
                                  ModuleCall(entry[0], mod, args, rest[0], rest[1]))
                finally:
                    stack.atomic_depth -= 1
                    stack.resume()

            return pre, post

        pre_of_own, post_of_own = hook_pair(own)
        # torch calls a module's own always-call hook as (args, kwargs, None) when the
        # forward (or a hook of the user's) raised, the same form as a forward that returned
        # None: a plain hook registered before it says which it was (one flag per running
        # call of such a module, innermost last)
        returned: list[bool] = []

        def own_pre(mod: nn.Module, args: Any, kwargs: Any) -> None:
            returned.append(False)
            pre_of_own(mod, args, kwargs)

        def own_returned(mod: nn.Module, args: Any, out: Any) -> None:
            returned[-1] = True

        def own_post(mod: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            if returned.pop():
                post_of_own(mod, args, kwargs, out)
            else:  # the form of a failed forward: the path is popped, nothing recorded
                post_of_own(mod, args, out)

        try:  # registration too: a lookup that raises half-way must leave no hook behind
            for name, module in named_modules:
                handler = lookup(module)
                if not module._forward_hooks and not module._forward_pre_hooks:
                    shared[id(module)] = (name, handler)
                    continue
                own[id(module)] = (name, handler)
                handles.append(module.register_forward_pre_hook(own_pre, with_kwargs=True))
                # before the user's forward hooks (prepended: own_returned runs first, then
                # own_post): the handler labels the layer's own output and the hooks then
                # run traced, like code after the call
                handles.append(module.register_forward_hook(own_post, with_kwargs=True,
                                                            always_call=True, prepend=True))
                handles.append(module.register_forward_hook(own_returned, prepend=True))
            if shared:
                shared_pre, shared_post = hook_pair(shared)
                handles.append(nn.modules.module.register_module_forward_pre_hook(shared_pre))
                handles.append(nn.modules.module.register_module_forward_hook(
                    shared_post, with_kwargs=True, always_call=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def suspend(self) -> None:
        """Take the recording mode off the torch-function stack while an atomic module runs:
        its inner ops and its handler's label arithmetic then run at full speed."""
        depth = torch._C._len_torch_function_stack()
        mode = self.mode
        if mode is not None and depth and torch._C._get_function_stack_at(depth - 1) is mode:
            torch._C._pop_torch_function_stack()
            self._suspended.append(True)
        else:
            self._suspended.append(False)

    def resume(self) -> None:
        if self._suspended.pop() and self.mode is not None:
            torch._C._push_on_torch_function_stack(self.mode)


class Recorder(TorchFunctionMode):
    """Runs every torch function, then hands it to ``on_op(func, args, kwargs, out)``
    unless an atomic module of ``stack`` runs (a write into a tensor of the model is first
    saved by ``writes``: :mod:`prunekit.graph.writes`); a shape read (``t.shape``, ``t.size()``,
    ``t.size(d)``, ``t.numel()``) returns what ``on_size(func, args, kwargs, out)`` makes
    of it. Calls whose result depends on tensor values are also kept in ``data``
    (graph/replay.py)."""

    def __init__(self, stack: CallStack, on_op: OnOp, on_size: OnSize | None = None,
                 writes: WriteGuard | None = None) -> None:
        super().__init__()
        self.stack = stack
        self.on_op = on_op
        self.on_size = on_size
        self.data = Recording(stack.modules[0])
        self.writes = writes if writes is not None else WriteGuard()
        self._watched = self.writes.watched

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if (kwargs and "out" in kwargs) or func is _BATCH_NORM or func is _INSTANCE_NORM:
            self.writes.into_arguments(func, args, kwargs)
        if args and id(args[0]) in self._watched:  # a model tensor: saved before a write
            alias = self.writes.before(func, args[0])
            out = func(*args, **kwargs)
            if alias:
                self.writes.alias(out, args[0])
        else:
            out = func(*args, **kwargs)
        if self.stack.atomic_depth == 0:  # stack.recording, without a property call per op
            kind = out.__class__
            if (kind is torch.Size or (kind is int and (func is _SIZE or func is _NUMEL))) and \
                    self.on_size is not None:
                return self.on_size(func, tuple(args), kwargs, out)
            if is_data_call(func, args):
                self.data.record(func, tuple(args), kwargs, out, sys._getframe(1))
            self.on_op(func, tuple(args), dict(kwargs), out)
        return out
