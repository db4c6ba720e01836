"""Training-loop callbacks, and the :class:`Pruner` that drives a schedule from any loop.

A user's loop needs two added lines::

    pruner = Pruner(PolynomialDecay(0.0, 0.9, begin_step=0, end_step=2000))
    pruner.on_train_begin(model, optimizer)            # line 1: before the first batch
    for step, (x, y) in enumerate(loader, start=1):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        pruner.on_step(step)                           # line 2: after optimizer.step()

``step`` counts the optimizer steps taken so far; ``on_train_begin`` applies the
schedule's step 0 (so ``OneShot(0.9)`` prunes before fine-tuning starts).

On ``finetune(resume=...)`` a fresh Pruner re-applies step 0; with the masks engine this
never changes the restored masks (``sparsify`` only adds to existing masks).

Engines: ``"masks"`` calls :func:`~prunekit.sparse.sparsify.sparsify` (already-pruned
entries stay pruned, so rising targets continue pruning); ``"structured"`` calls
:func:`prunekit.structured.prune` in place and **slices the optimizer state** (momentum,
Adam moments) to the kept channels by replaying the same plan on copies holding the
state — or, with ``optimizer_state="reset"``, drops it. Either way the optimizer's
parameter list points at the new parameters; nothing is silently stale. A structured
schedule's sparsity is the fraction of channels removed from every group of the *original*
model; each step asks ``prune`` for the matching share of the current width, so per-step
rounding can leave a group a channel off the exact cumulative target.

RigL reads *dense* gradients (of the masked weight, which the optimizer never sees: the
gradient reaching the hidden original is already masked) through a backward hook on each
mask, recorded during ``loss.backward()`` of the step it updates on. It therefore does not
matter where the loop calls ``zero_grad``; ``on_step`` must follow that step's backward.
Under ``torch.distributed`` the dense gradients are averaged over ranks and every mask
change is broadcast from rank 0, so masks are identical on all ranks.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.hooks import RemovableHandle

from prunekit._inputs import ExampleInputs
from prunekit.errors import ConfigError, check_choice
from prunekit.schedules.base import Schedule
from prunekit.schedules.regrowth import drop_and_grow
from prunekit.sparse.masks import WeightMask, apply_mask, masked_tensors
from prunekit.sparse.sparsify import sparsify
from prunekit.train.checkpointing import TrainingState
from prunekit.train.distributed import all_reduce_mean, broadcast_masks, unwrap

Engine = Literal["masks", "structured"]
ENGINES: tuple[str, ...] = get_args(Engine)
StateMode = Literal["slice", "reset"]


class Callback:
    """Hooks a training loop calls; every hook is optional (the defaults do nothing)."""

    def on_train_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Before the first batch."""

    def on_epoch_begin(self, epoch: int) -> None:
        """Before epoch ``epoch`` (1-based)."""

    def on_step(self, step: int, loss: float | None = None) -> None:
        """After ``optimizer.step()``; ``step`` optimizer steps have been taken."""

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float] | None = None) -> None:
        """After epoch ``epoch`` (1-based) and its evaluation."""

    def on_train_end(self) -> None:
        """After the last epoch (also after an early stop)."""


class SamplerEpoch(Callback):
    """Calls ``sampler.set_epoch`` so a DistributedSampler shuffles anew each epoch, alike on
    every rank (``finetune_distributed`` adds it)."""

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.sampler = loader.sampler

    def on_epoch_begin(self, epoch: int) -> None:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)


class EarlyStopping:
    """``finetune``'s patience rule: ``update`` is True once ``patience`` epochs in a row brought
    no better eval accuracy. Its best value and count live in the (checkpointed) ``state``."""

    def __init__(self, patience: int | None, state: TrainingState) -> None:
        self.patience, self.state = patience, state

    def update(self, accuracy: float | None) -> bool:
        if accuracy is None:
            return False
        best = self.state.best_metric
        if best is None or accuracy > best:
            self.state.best_metric, self.state.stale_epochs = accuracy, 0
        else:
            self.state.stale_epochs += 1
        return self.patience is not None and self.state.stale_epochs >= self.patience


@dataclass(frozen=True)
class MaskOptions:
    """How the masks engine prunes (the arguments of ``sparsify``; ignore by module name)."""

    criterion: str = "l1"
    scope: Literal["global", "layer"] = "global"
    pattern: str = "unstructured"
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_choice("scope", self.scope, ("global", "layer"))
        if isinstance(self.ignore, str) or not all(isinstance(n, str) for n in self.ignore):
            raise TypeError(f"ignore must be a tuple of module names, got {self.ignore!r}")


@dataclass(frozen=True)
class StructuredOptions:
    """How the structured engine prunes; ``optimizer_state`` is ``"slice"`` or ``"reset"``."""

    example_inputs: ExampleInputs
    importance: str = "l2"
    ignore: tuple[str, ...] = ()
    optimizer_state: StateMode = "slice"

    def __post_init__(self) -> None:
        check_choice("optimizer_state", self.optimizer_state, get_args(StateMode))


class Pruner(Callback):
    """Apply ``schedule`` to a model with the masks or the structured engine (see module doc)."""

    def __init__(
        self,
        schedule: Schedule,
        *,
        engine: Engine = "masks",
        masks: MaskOptions | None = None,
        structured: StructuredOptions | None = None,
    ) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(
                f"schedule must be a prunekit Schedule (e.g. PolynomialDecay(...)), got "
                f"{type(schedule).__name__}"
            )
        check_choice("engine", engine, ENGINES)
        if engine == "structured" and structured is None:
            raise ConfigError(
                "engine='structured' needs structured=StructuredOptions(example_inputs=...) "
                "(prune traces the model on them)"
            )
        if engine == "structured" and schedule.regrows:
            raise ConfigError(
                f"schedule {schedule.name!r} regrows single weights; use engine='masks' with it"
            )
        self.schedule, self.engine = schedule, engine
        self.masks = masks or MaskOptions()
        self.structured = structured
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.removed = 0.0  # structured: fraction of channels removed so far
        self.plans: list[dict[str, Any]] = []
        self._grads: dict[str, torch.Tensor] = {}
        self._hooks: list[RemovableHandle] = []

    # -- lifecycle -------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> None:
        """Register all-True masks on the tensors this pruner will prune (masks engine).

        Call before wrapping the model in DistributedDataParallel: DDP binds the parameters
        it sees at wrap time, and a mask registered later moves the weight out of its reach.
        ``finetune_distributed`` does this for you.
        """
        if self.engine == "masks":
            opts = self.masks
            sparsify(unwrap(model), 0.0, criterion="l1", pattern=opts.pattern,
                     ignore=opts.ignore)

    def on_train_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
        if self.engine == "structured" and unwrap(model) is not model:
            raise ConfigError(
                "structured schedules replace parameters, which DistributedDataParallel "
                "cannot follow; prune before wrapping the model in DDP, or use engine='masks'"
            )
        self.model, self.optimizer = unwrap(model), optimizer
        self._prune_if_due(0)
        if self.schedule.regrows and masked_tensors(self.model):
            self._install_grad_hooks()  # e.g. resumed after begin_step, or prepared for DDP

    def on_step(self, step: int, loss: float | None = None) -> None:
        if self.model is None:
            raise RuntimeError("call pruner.on_train_begin(model, optimizer) before on_step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ConfigError(f"step={step!r} must be an int >= 1 (optimizer steps taken)")
        self._prune_if_due(step)
        fraction = self.schedule.update_fraction(step)
        if fraction > 0:
            self._regrow(fraction)
        self._grads.clear()

    def on_train_end(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    # -- pruning ---------------------------------------------------------------------------
    def _prune_if_due(self, step: int) -> None:
        due, sparsity = self.schedule(step)
        if not due or sparsity <= 0.0:
            return
        if self.engine == "structured":
            self._prune_structured(sparsity)
            return
        model = self._model()
        opts = self.masks
        # RigL then keeps every layer's count of active weights exactly as this cut left it
        sparsify(model, sparsity, criterion=opts.criterion, scope=opts.scope,
                 pattern=opts.pattern, ignore=opts.ignore)
        broadcast_masks(model)
        if self.schedule.regrows:
            self._install_grad_hooks()

    def _prune_structured(self, sparsity: float) -> None:
        from prunekit.structured import prune  # the structured engine is optional here

        opts = self.structured
        if opts is None:  # checked in __init__
            raise ConfigError("engine='structured' needs structured=StructuredOptions(...)")
        ratio = 1.0 - (1.0 - sparsity) / (1.0 - self.removed)
        if ratio <= 1e-9:
            return
        model, optimizer = self._model(), self._optimizer()
        before = copy.deepcopy(model)
        old_params = dict(model.named_parameters())
        ignore = [model.get_submodule(name) for name in opts.ignore]
        result = prune(model, opts.example_inputs, ratio=ratio, importance=opts.importance,
                       ignore=ignore, inplace=True)
        remap_optimizer(optimizer, before, old_params, model, result.plan,
                        reset=opts.optimizer_state == "reset")
        self.removed = sparsity
        self.plans.append(result.plan)

    # -- RigL --------------------------------------------------------------------------------
    def _install_grad_hooks(self) -> None:
        if self._hooks:
            return
        model = self._model()
        for full in masked_tensors(model):
            for child in _chain(model, full).children():
                if isinstance(child, WeightMask):
                    self._hooks.append(child.register_forward_hook(self._grad_recorder(full)))

    def _grad_recorder(self, name: str) -> Any:
        def record_output(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if output.requires_grad:
                output.register_hook(lambda grad: self._add_grad(name, grad))

        return record_output

    def _add_grad(self, name: str, grad: torch.Tensor) -> None:
        old = self._grads.get(name)
        self._grads[name] = grad.detach() if old is None else old + grad.detach()

    def _regrow(self, fraction: float) -> None:
        model, optimizer = self._model(), self._optimizer()
        changes = []
        for full, mask in masked_tensors(model).items():
            grad = self._grads.get(full)
            if grad is None:
                raise RuntimeError(
                    f"RigL needs the dense gradient of {full} at this step; call "
                    f"pruner.on_step(step) after loss.backward() of the same step (a hook "
                    f"records it during backward)"
                )
            all_reduce_mean(grad)
            module, tensor = _owner(model, full)
            original = _chain(model, full).original
            if not isinstance(original, torch.Tensor):
                raise TypeError(f"{full} has no parametrized original tensor")
            old = mask.clone()
            apply_mask(module, tensor, drop_and_grow(old, original * old, grad, fraction))
            changes.append((original, old, mask))  # ``mask`` is the live buffer
        broadcast_masks(model)
        for original, old, new in changes:
            _zero_grown(original, new & ~old, optimizer)

    def _model(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("call pruner.on_train_begin(model, optimizer) first")
        return self.model

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            raise RuntimeError("call pruner.on_train_begin(model, optimizer) first")
        return self.optimizer


def _owner(model: nn.Module, full_name: str) -> tuple[nn.Module, str]:
    module_name, _, tensor = full_name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), tensor


def _chain(model: nn.Module, full_name: str) -> nn.Module:
    """The parametrization list of tensor ``full_name`` (it holds ``original`` and the mask)."""
    module, tensor = _owner(model, full_name)
    chains = getattr(module, "parametrizations", None)
    if not isinstance(chains, nn.ModuleDict) or tensor not in chains:
        raise ConfigError(f"{full_name} is not masked; prune it before updating its mask")
    return chains[tensor]


@torch.no_grad()
def _zero_grown(param: torch.Tensor, grown: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """RigL initialises regrown weights to 0, and their optimizer moments with them."""
    param[grown] = 0.0
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value[grown] = 0.0


def remap_optimizer(
    optimizer: torch.optim.Optimizer,
    before: nn.Module,
    old_params: Mapping[str, nn.Parameter],
    after: nn.Module,
    plan: Mapping[str, Any],
    *,
    reset: bool = False,
) -> None:
    """Point ``optimizer`` at ``after``'s parameters after structured pruning, in place.

    ``before`` is an untouched copy of the model the plan was made on and ``old_params`` its
    parameters as the optimizer knows them (by name). Every per-parameter state tensor of
    the parameter's shape (SGD ``momentum_buffer``, Adam ``exp_avg`` / ``exp_avg_sq``) is
    cut exactly like its parameter: the plan is replayed on a copy of ``before`` that holds
    that state in place of the weights. Scalars (Adam's ``step``) are kept. With ``reset``
    the state is dropped instead. Parameters that the plan removed entirely (depth pruning)
    leave the optimizer. Learning-rate schedulers keep working: the optimizer object is
    the same.
    """
    new_params = dict(after.named_parameters())
    name_of = {id(p): n for n, p in old_params.items()}
    old_state = {name_of[id(p)]: s for p, s in optimizer.state.items() if id(p) in name_of}
    sliced: dict[str, dict[str, Any]] = {} if reset else _slice_state(before, old_state, plan)
    optimizer.state.clear()
    for group in optimizer.param_groups:
        kept = []
        for p in group["params"]:
            name = name_of.get(id(p))
            if name is None:
                raise ConfigError(
                    "the optimizer holds a parameter that is not in the model; build it "
                    "from model.parameters() before on_train_begin"
                )
            if name in new_params:
                kept.append(new_params[name])
                if name in sliced:
                    optimizer.state[new_params[name]] = sliced[name]
        group["params"] = kept


def _slice_state(
    before: nn.Module, state: Mapping[str, Mapping[str, Any]], plan: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    from prunekit.structured import apply_plan

    # per-parameter tensors (moments); scalar tensors such as Adam's ``step`` are copied
    keys = {k for s in state.values() for k, v in s.items()
            if isinstance(v, torch.Tensor) and v.dim() > 0}
    out: dict[str, dict[str, Any]] = {
        name: {k: v.clone() if isinstance(v, torch.Tensor) else v
               for k, v in s.items() if k not in keys}
        for name, s in state.items()
    }
    for key in sorted(keys):
        shadow = copy.deepcopy(before)
        shadow_params = dict(shadow.named_parameters())
        with torch.no_grad():
            for name, p in shadow_params.items():
                value = state.get(name, {}).get(key)
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    p.copy_(value)
                else:
                    p.zero_()
        apply_plan(shadow, plan)
        cut = dict(shadow.named_parameters())
        for name, s in state.items():
            value = s.get(key)
            if not isinstance(value, torch.Tensor) or name not in cut:
                continue
            if value.shape != shadow_params[name].shape:
                raise ConfigError(
                    f"optimizer state {key!r} of {name} has shape {tuple(value.shape)}, not "
                    f"the parameter's; use StructuredOptions(optimizer_state='reset')"
                )
            out[name][key] = cut[name].detach().clone()
    return out
