"""The sequential block-by-block driver, written once for every method.

For each block in order: hooks on the block's ``nn.Linear`` layers feed one solver per
layer with ``add_batch(inp, out)`` while the block runs on all captured inputs; then a
``finish`` callback (pruning, or recording statistics for OWL) sees the solvers, which are
``free()``-d; finally the block is re-run to produce the next block's inputs. The next
block therefore sees the outputs of the *pruned* block (as in the SparseGPT and Wanda
reference codes), so later blocks compensate for the error of earlier ones. Only one
block's inputs and outputs are alive at a time.

With ``true_sequential`` a block is processed in stages: layers that read the *same input
tensor* one after another in the block's forward (q/k/v read the normed hidden state;
gate/up read the normed residual) form one stage, and each stage's statistics are
collected after the earlier stages were pruned (so o_proj sees the pruned q/k/v outputs,
down_proj the pruned gate/up). Stages come from the execution order observed on one
forward pass, never from layer names, so any architecture works.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.llm.blocks import BlockInput, block_outputs
from prunekit.llm.reconstruct import ReconstructConfig, reconstruct_block
from prunekit.llm.solvers import LayerSolver, SolverFactory

Layers = dict[str, nn.Linear]
Finish = Callable[[int, dict[str, LayerSolver]], None]
# Entered around each block's whole turn (statistics, pruning, outputs): a streaming caller
# loads the block's weights on entry and writes / releases them on exit.
Around = Callable[[int, nn.Module], contextlib.AbstractContextManager[Any]]


def prunable_layers(block: nn.Module) -> Layers:
    """The block's ``nn.Linear`` layers by name relative to the block."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def _run(block: nn.Module, inputs: Sequence[BlockInput]) -> None:
    for item in inputs:
        block(*item.args, **item.kwargs)


def execution_stages(block: nn.Module, layers: Layers, sample: BlockInput) -> list[Layers]:
    """Group ``layers`` into stages: consecutive calls that read the same input tensor."""
    order: list[tuple[str, torch.Tensor]] = []

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
            if all(name != seen for seen, _ in order):
                order.append((name, args[0]))

        return hook

    handles = [layer.register_forward_pre_hook(make_hook(n)) for n, layer in layers.items()]
    try:
        _run(block, [sample])
    finally:
        for handle in handles:
            handle.remove()
    stages: list[Layers] = []
    previous: torch.Tensor | None = None
    for name, inp in order:
        if previous is None or inp is not previous:
            stages.append({})
        stages[-1][name] = layers[name]
        previous = inp
    # layers the sample never reached still get pruned, last, on whatever they saw
    missed = {n: layer for n, layer in layers.items() if all(n not in s for s in stages)}
    return [*stages, missed] if missed else stages


def _collect(
    block: nn.Module, inputs: Sequence[BlockInput], stage: Layers, make_solver: SolverFactory
) -> dict[str, LayerSolver]:
    solvers = {name: make_solver(layer) for name, layer in stage.items()}

    def make_hook(solver: LayerSolver) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(_: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            solver.add_batch(args[0].detach(), out.detach())

        return hook

    handles = [stage[n].register_forward_hook(make_hook(s)) for n, s in solvers.items()]
    try:
        _run(block, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return solvers


def run_sequential(
    blocks: nn.ModuleList,
    inputs: list[BlockInput],
    make_solver: SolverFactory,
    finish: Finish,
    *,
    true_sequential: bool = True,
    reconstruct: ReconstructConfig | None = None,
    around: Around | None = None,
) -> None:
    """Walk ``blocks`` in order, feeding solvers and calling ``finish(block_index, solvers)``
    once per stage; ``inputs`` are block 0's captured inputs (consumed).

    With ``reconstruct`` the dense block's outputs on the same inputs are kept while the
    block is pruned, and its kept weights are then fitted to them (one more set of
    activations alive). Each block's turn runs inside ``around(block_index, block)``."""
    with torch.no_grad():
        for index, block in enumerate(blocks):
            with contextlib.nullcontext() if around is None else around(index, block):
                inputs = _process_block(
                    index, block, inputs, make_solver, finish, true_sequential, reconstruct
                )


def _process_block(
    index: int,
    block: nn.Module,
    inputs: list[BlockInput],
    make_solver: SolverFactory,
    finish: Finish,
    true_sequential: bool,
    reconstruct: ReconstructConfig | None,
) -> list[BlockInput]:
    """One block's turn in ``run_sequential``; returns the next block's inputs."""
    layers = prunable_layers(block)
    dense = block_outputs(block, inputs) if reconstruct is not None else []
    stages = execution_stages(block, layers, inputs[0]) if true_sequential and layers else [layers]
    for stage in stages:
        solvers = _collect(block, inputs, stage, make_solver)
        finish(index, solvers)
        for solver in solvers.values():
            solver.free()
        del solvers
    if reconstruct is not None:
        reconstruct_block(block, inputs, dense, list(layers.values()), reconstruct)
        del dense
    return [
        item.with_hidden(out)
        for item, out in zip(inputs, block_outputs(block, inputs), strict=True)
    ]
