"""Layer-wise pruning solvers, registered in one table (``SOLVERS``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from prunekit.errors import check_choice
from prunekit.llm.solvers.base import LayerSolver, NMPattern, Pattern, parse_pattern
from prunekit.llm.solvers.magnitude import MagnitudeSolver
from prunekit.llm.solvers.sparsegpt import SparseGPTSolver
from prunekit.llm.solvers.wanda import WandaSolver

SolverFactory = Callable[[nn.Linear], LayerSolver]

SOLVERS: dict[str, SolverFactory] = {
    "magnitude": MagnitudeSolver,
    "wanda": WandaSolver,
    "sparsegpt": SparseGPTSolver,
}


def register_solver(name: str, factory: SolverFactory) -> None:
    """Add a solver under ``name`` (a class or function taking the ``nn.Linear`` to prune)."""
    SOLVERS[name] = factory


def get_solver(name: str) -> SolverFactory:
    """The factory registered as ``name``; a ConfigError lists the valid names otherwise."""
    return SOLVERS[check_choice("method", name, SOLVERS)]


__all__ = [
    "SOLVERS",
    "LayerSolver",
    "MagnitudeSolver",
    "NMPattern",
    "Pattern",
    "SolverFactory",
    "SparseGPTSolver",
    "WandaSolver",
    "get_solver",
    "parse_pattern",
    "register_solver",
]
