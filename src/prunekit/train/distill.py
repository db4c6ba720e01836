"""Knowledge distillation from the unpruned model (Hinton et al. 2015), usable as ``loss_fn``.

    loss = α · T² · KL(softmax(t / T) ‖ softmax(s / T)) + (1 − α) · task(s, y)
           + β · Σ_layers MSE(adapter(student_feature), teacher_feature)

with ``s`` / ``t`` the student / teacher logits. The T² keeps the soft-target gradients on
the scale of the hard-target ones. Feature matching reads the named layers' outputs through
forward hooks; where structured pruning narrowed a student layer, a trainable Linear
adapter maps its channels (dim 1 of 4-D conv maps, the last dim otherwise) to the teacher's
width. The adapters are parameters of this loss (an ``nn.Module``), and ``finetune`` trains
a loss module's parameters with the model's. The teacher is frozen and kept in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunekit._inputs import ExampleInputs, run_model
from prunekit.errors import ConfigError, DataError, check_fraction

TaskLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over the batch."""
    return F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * temperature**2


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1) if x.dim() == 4 else x


class _Recorder:
    """Keeps the latest output of each hooked module by name."""

    def __init__(self) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles: list[RemovableHandle] = []

    def hook(self, model: nn.Module, names: list[str], role: str) -> None:
        for name in names:
            try:
                module = model.get_submodule(name)
            except AttributeError as exc:
                raise ConfigError(
                    f"features names {role} layer {name!r}, which the {role} does not have"
                ) from exc
            self.handles.append(module.register_forward_hook(self._store(name)))

    def _store(self, name: str) -> Callable[..., None]:
        def store(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise DataError(f"feature layer {name!r} returned {type(output).__name__}, "
                                f"not a Tensor; match a layer with a tensor output")
            self.outputs[name] = output

        return store

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class DistillationLoss(nn.Module):
    """``loss_fn(student, (inputs, targets))`` distilling ``teacher`` into the student.

    Args:
        teacher: the unpruned model; frozen (``requires_grad=False``) and put in eval mode.
        alpha: weight of the distillation term in [0, 1]; ``1 - alpha`` weighs ``task_loss``.
        temperature: softmax temperature T > 0.
        task_loss: ``task_loss(logits, targets)``; default cross-entropy.
        features: ``{student layer: teacher layer}`` whose outputs are matched by MSE.
        feature_weight: β, the weight of the summed feature losses.
        student, example_inputs: needed with ``features``: the hooks go on ``student`` and one
            forward pass of both models on ``example_inputs`` sizes the adapters.
    """

    def __init__(
        self,
        teacher: nn.Module,
        *,
        alpha: float = 0.5,
        temperature: float = 4.0,
        task_loss: TaskLoss | None = None,
        features: Mapping[str, str] | None = None,
        feature_weight: float = 1.0,
        student: nn.Module | None = None,
        example_inputs: ExampleInputs | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        self.alpha = check_fraction("alpha", alpha, allow_one=True, meaning="")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
                not temperature > 0:
            raise ConfigError(f"temperature={temperature!r} must be a number > 0 (e.g. 4.0)")
        self.temperature = float(temperature)
        self.task_loss: TaskLoss = task_loss or F.cross_entropy
        self.feature_weight = float(feature_weight)
        self.features = dict(features or {})
        self.teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule
        self.adapters = nn.ModuleDict()
        self._student_rec, self._teacher_rec = _Recorder(), _Recorder()
        if self.features:
            if student is None or example_inputs is None:
                raise ConfigError(
                    "features=... needs student=<the model being trained> and "
                    "example_inputs=<one batch of inputs> to hook the layers and size adapters"
                )
            self._student_rec.hook(student, list(self.features), "student")
            self._teacher_rec.hook(teacher, list(self.features.values()), "teacher")
            self._build_adapters(student, example_inputs)

    @torch.no_grad()
    def _build_adapters(self, student: nn.Module, example_inputs: ExampleInputs) -> None:
        training = student.training
        student.eval()
        try:
            run_model(student, example_inputs)
            run_model(self.teacher[0], example_inputs)
        finally:
            student.train(training)
        for s_name, t_name in self.features.items():
            s_out = _channels_last(self._student_rec.outputs[s_name])
            t_out = _channels_last(self._teacher_rec.outputs[t_name])
            if s_out.shape[:-1] != t_out.shape[:-1]:
                raise ConfigError(
                    f"feature {s_name!r} {tuple(s_out.shape)} and teacher {t_name!r} "
                    f"{tuple(t_out.shape)} differ beyond their channel dimension; match "
                    f"layers with the same spatial / sequence shape"
                )
            if s_out.shape[-1] != t_out.shape[-1]:
                adapter = nn.Linear(s_out.shape[-1], t_out.shape[-1])
                self.adapters[s_name.replace(".", "__")] = adapter.to(s_out.device)

    def forward(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise DataError("DistillationLoss expects (inputs, targets) batches")
        inputs, targets = batch
        teacher = self.teacher[0]
        teacher.eval()
        student_logits = model(inputs)
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        loss = self.alpha * kd_loss(student_logits, teacher_logits, self.temperature)
        if self.alpha < 1.0:
            loss = loss + (1.0 - self.alpha) * self.task_loss(student_logits, targets)
        for s_name, t_name in self.features.items():
            s_out = _channels_last(self._student_rec.outputs[s_name])
            t_out = _channels_last(self._teacher_rec.outputs[t_name])
            key = s_name.replace(".", "__")
            if key in self.adapters:
                s_out = self.adapters[key](s_out)
            loss = loss + self.feature_weight * F.mse_loss(s_out, t_out)
        return loss

    def close(self) -> None:
        """Remove the feature hooks from both models."""
        self._student_rec.remove()
        self._teacher_rec.remove()
