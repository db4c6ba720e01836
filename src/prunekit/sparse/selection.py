"""Which weight tensors of a model ``sparsify`` prunes: layer types, ignore list, overrides."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import ConfigError, NothingToPruneError, check_fraction

#: Layers whose ``weight`` is pruned by default; biases and norm layers are left alone.
DEFAULT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

_TENSOR = "weight"


@dataclass(frozen=True)
class Target:
    """One weight tensor to prune: ``module_name`` + "." + ``tensor`` is its full name."""

    module_name: str
    module: nn.Module
    tensor: str = _TENSOR

    @property
    def name(self) -> str:
        return f"{self.module_name}.{self.tensor}" if self.module_name else self.tensor

    def weight(self) -> torch.Tensor:
        """The effective (masked) tensor."""
        return cast(torch.Tensor, getattr(self.module, self.tensor))

    def raw(self) -> torch.Tensor:
        """The stored Parameter (the parametrization's ``original`` when masked)."""
        if parametrize.is_parametrized(self.module, self.tensor):
            holder = self.module.parametrizations[self.tensor]  # type: ignore[index]
            return cast(torch.Tensor, holder.original)  # type: ignore[union-attr]
        return self.weight()


def check_layers(layers: object) -> tuple[type[nn.Module], ...]:
    """``layers`` as a non-empty tuple of nn.Module subclasses, or a TypeError/ConfigError."""
    items = (layers,) if isinstance(layers, type) else layers
    if not isinstance(items, Iterable):
        raise TypeError(
            f"layers must be a tuple of nn.Module classes such as (nn.Linear, nn.Conv2d), "
            f"got {type(layers).__name__} {layers!r}"
        )
    out = tuple(items)
    for item in out:
        if not (isinstance(item, type) and issubclass(item, nn.Module)):
            raise TypeError(
                f"layers must hold nn.Module classes such as nn.Linear, got {item!r} "
                f"in layers={layers!r}"
            )
    if not out:
        raise ConfigError("layers=() selects nothing; pass e.g. layers=(nn.Linear, nn.Conv2d)")
    return out


def resolve_ignore(
    model: nn.Module, ignore: Iterable[nn.Module | str] | nn.Module | str
) -> tuple[str, ...]:
    """Module names of the ``ignore`` entries; every entry must be a module of ``model``."""
    entries = [ignore] if isinstance(ignore, (str, nn.Module)) else list(ignore)
    names_by_id = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    known = dict(model.named_modules())
    out: list[str] = []
    for entry in entries:
        if isinstance(entry, nn.Module):
            if id(entry) not in names_by_id:
                raise ConfigError(
                    f"ignore entry {type(entry).__name__} (id {id(entry):#x}) is not a "
                    f"submodule of the model; pass modules of this model (e.g. model.fc) "
                    f"or their names"
                )
            out.append(names_by_id[id(entry)])
        elif isinstance(entry, str):
            if entry not in known:
                raise ConfigError(
                    f"ignore entry {entry!r} is not a module name of the model; use a name "
                    f"from model.named_modules(), e.g. {_examples(known)}"
                )
            out.append(entry)
        else:
            raise TypeError(
                f"ignore entries must be nn.Module objects or module names, got "
                f"{type(entry).__name__} {entry!r}"
            )
    return tuple(out)


def _examples(names: Iterable[str], limit: int = 6) -> str:
    shown = [repr(n) for n in names if n][:limit]
    return ", ".join(shown) if shown else "(the model has no submodules)"


def _is_ignored(name: str, ignored: tuple[str, ...]) -> bool:
    return any(name == i or not i or name.startswith(i + ".") for i in ignored)


def select_targets(
    model: nn.Module, layers: tuple[type[nn.Module], ...], ignored: tuple[str, ...]
) -> list[Target]:
    """The weights of modules of type ``layers`` outside the ``ignored`` subtrees."""
    targets = [
        Target(name, module)
        for name, module in model.named_modules()
        if isinstance(module, layers)
        and not _is_ignored(name, ignored)
        and isinstance(getattr(module, _TENSOR, None), torch.Tensor)
    ]
    if not targets:
        kinds = ", ".join(t.__name__ for t in layers)
        raise NothingToPruneError(
            f"no weights to prune: the model has no {kinds} layers outside ignore="
            f"{list(ignored)!r}; pass layers=(...) naming the layer types to prune or "
            f"shorten ignore"
        )
    seen: dict[int, str] = {}
    for target in targets:
        key = id(target.raw())
        if key in seen:
            raise ConfigError(
                f"{target.name} and {seen[key]} are the same Parameter (tied weights); "
                f"add one of the two modules to ignore"
            )
        seen[key] = target.name
    return targets


def resolve_overrides(
    overrides: Mapping[str, float] | None, targets: list[Target]
) -> dict[str, float]:
    """Validated per-module sparsities keyed by the module name of a target."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(
            f"overrides must map module names to sparsities, e.g. {{'fc3': 0.5}}, got "
            f"{type(overrides).__name__} {overrides!r}"
        )
    by_module = {t.module_name for t in targets}
    out: dict[str, float] = {}
    for name, value in overrides.items():
        if name not in by_module:
            raise ConfigError(
                f"overrides key {name!r} is not a prunable layer of the model; use one of: "
                f"{_examples(sorted(by_module), limit=12)}"
            )
        out[name] = check_fraction(f"overrides[{name!r}]", value)
    return out
