"""Pruner: schedules drive masks or structured surgery from a user's loop or finetune."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import ConfigError
from prunekit.schedules import Iterative, OneShot, PolynomialDecay, RigL
from prunekit.schedules.regrowth import drop_and_grow
from prunekit.sparse.masks import masked_tensors
from prunekit.train.callbacks import MaskOptions, Pruner, StructuredOptions
from prunekit.train.finetune import FinetuneConfig, finetune


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 4))


def _batches(n: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g))
            for _ in range(n)]


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, pruner: Pruner,
           batches: list[tuple[torch.Tensor, torch.Tensor]], check: object = None) -> None:
    pruner.on_train_begin(model, optimizer)                    # added line 1
    for step, (x, y) in enumerate(batches, start=1):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.on_step(step)                                   # added line 2
        if callable(check):
            check(step)


def _global_sparsity(model: nn.Module) -> tuple[int, int]:
    masks = masked_tensors(model)
    return sum(int((~m).sum()) for m in masks.values()), sum(m.numel() for m in masks.values())


def test_polynomial_masks_reach_each_target_and_never_regrow() -> None:
    model = _mlp()
    schedule = PolynomialDecay(0.2, 0.9, begin_step=0, end_step=10, frequency=2)
    pruner = Pruner(schedule)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    previous: dict[str, torch.Tensor] = {}

    def check(step: int) -> None:
        pruned, total = _global_sparsity(model)
        due, target = schedule(step)
        if due:
            assert pruned == round(target * total)  # exactly the schedule's sparsity
        for name, mask in masked_tensors(model).items():
            if name in previous:
                assert not bool((mask & ~previous[name]).any())  # pruned stays pruned
            previous[name] = mask.clone()
            weight = model.get_submodule(name.rsplit(".", 1)[0]).weight
            assert bool((weight[~mask] == 0).all())

    _train(model, opt, pruner, _batches(), check)
    pruned, total = _global_sparsity(model)
    assert pruned == round(0.9 * total)


def test_finetune_callbacks_iterative_reaches_target() -> None:
    model = _mlp()
    loader = DataLoader(TensorDataset(torch.randn(64, 16), torch.randint(0, 4, (64,))),
                        batch_size=8)
    pruner = Pruner(Iterative(0.8, cycles=2, cycle_steps=8), masks=MaskOptions(scope="layer"))
    finetune(model, loader, 2, config=FinetuneConfig(lr=0.05), callbacks=[pruner],
             progress=False)
    for mask in masked_tensors(model).values():
        assert 1 - mask.float().mean().item() == pytest.approx(0.8, abs=1 / mask.numel())


def test_rigl_keeps_exact_per_layer_sparsity_while_the_mask_changes() -> None:
    model = _mlp()
    schedule = RigL(0.75, end_step=12, update_every=3, alpha=0.5)
    pruner = Pruner(schedule, masks=MaskOptions(scope="layer"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    counts: dict[str, int] = {}
    history: list[dict[str, torch.Tensor]] = []

    def check(step: int) -> None:
        masks = {k: m.clone() for k, m in masked_tensors(model).items()}
        for name, mask in masks.items():
            kept = int(mask.sum())
            counts.setdefault(name, kept)
            assert kept == counts[name]  # exactly the same number active
            assert kept == mask.numel() - round(0.75 * mask.numel())
        if schedule.update_fraction(step) > 0:
            changed = any(not torch.equal(m, history[-1][k]) for k, m in masks.items())
            assert changed
            for name, mask in masks.items():
                grown = mask & ~history[-1][name]
                original = model.get_submodule(name.rsplit(".", 1)[0]) \
                    .parametrizations.weight.original
                assert bool((original[grown] == 0).all())  # regrown start at zero
                state = opt.state[original]
                assert bool((state["exp_avg"][grown] == 0).all())
        history.append(masks)

    _train(model, opt, pruner, _batches(), check)
    pruner.on_train_end()


def test_drop_and_grow_hand_example() -> None:
    mask = torch.tensor([True, True, True, False, False, False])
    weight = torch.tensor([0.5, -0.1, 2.0, 0.0, 0.0, 0.0])
    grad = torch.tensor([9.0, 9.0, 9.0, 0.1, -3.0, 1.0])
    new = drop_and_grow(mask, weight, grad, 0.34)  # k = floor(0.34 * 3) = 1
    assert new.tolist() == [True, False, True, False, True, False]
    assert torch.equal(drop_and_grow(mask, weight, grad, 0.0), mask)


def test_structured_multi_step_with_adam_slices_moments() -> None:
    model = _mlp()
    x = torch.randn(2, 16)
    pruner = Pruner(Iterative(0.5, cycles=2, cycle_steps=4, begin_step=4), engine="structured",
                    structured=StructuredOptions(example_inputs=x, ignore=("4",)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100)
    batches = _batches(12)
    pruner.on_train_begin(model, opt)
    snapshot: dict[str, torch.Tensor] = {}
    for step, (xb, yb) in enumerate(batches, start=1):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
        sched.step()
        if step == 4:
            snapshot = {n: opt.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
        pruner.on_step(step)
        if step == 4:
            plan = pruner.plans[0]
            rows = torch.tensor(plan["modules"]["0"]["keep"]["out"])
            assert torch.equal(opt.state[model[0].weight]["exp_avg"],
                               snapshot["0.weight"][rows])
            cols = torch.tensor(plan["modules"]["2"]["keep"]["in"])
            assert torch.equal(opt.state[model[2].weight]["exp_avg"][:, :, ],
                               snapshot["2.weight"][torch.tensor(
                                   plan["modules"]["2"]["keep"]["out"])][:, cols])
        params = [p for g in opt.param_groups for p in g["params"]]
        assert {id(p) for p in params} == {id(p) for p in model.parameters()}
        for p in params:
            for value in opt.state[p].values():
                if value.dim():
                    assert value.shape == p.shape
    assert model[0].out_features < 32 and model[2].out_features < 32
    assert model(x).shape == (2, 4)


def test_structured_reset_drops_state() -> None:
    model = _mlp()
    pruner = Pruner(OneShot(0.5, step=2), engine="structured",
                    structured=StructuredOptions(torch.randn(2, 16), ignore=("4",),
                                                 optimizer_state="reset"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt, pruner, _batches(4))
    assert model[0].out_features == 16
    assert all(v["momentum_buffer"].shape == p.shape for p, v in opt.state.items())


def test_errors() -> None:
    with pytest.raises(TypeError, match="Schedule"):
        Pruner(0.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="StructuredOptions"):
        Pruner(OneShot(0.5), engine="structured")
    with pytest.raises(ConfigError, match="engine"):
        Pruner(OneShot(0.5), engine="nope")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="regrows"):
        Pruner(RigL(0.5, end_step=10), engine="structured",
               structured=StructuredOptions(torch.randn(1, 16)))
    with pytest.raises(ConfigError, match="optimizer_state"):
        StructuredOptions(torch.randn(1, 16), optimizer_state="keep")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="on_train_begin"):
        Pruner(OneShot(0.5)).on_step(1)
    model = _mlp()
    pruner = Pruner(RigL(0.5, end_step=10, update_every=1))
    pruner.on_train_begin(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match=r"loss.backward\(\)"):
        pruner.on_step(1)  # no backward happened


def test_structured_schedule_inside_finetune_with_adam_and_cosine() -> None:
    model = _mlp()
    loader = DataLoader(TensorDataset(torch.randn(64, 16), torch.randint(0, 4, (64,))),
                        batch_size=8)
    pruner = Pruner(PolynomialDecay(0.0, 0.5, begin_step=2, end_step=12, frequency=4),
                    engine="structured",
                    structured=StructuredOptions(torch.randn(2, 16), ignore=("4",)))
    history = finetune(model, loader, 3, config=FinetuneConfig(optimizer="adam", lr=1e-2,
                       grad_clip=1.0), callbacks=[pruner], progress=False)
    assert len(pruner.plans) == 3 and pruner.removed == pytest.approx(0.5)
    # each step rounds every group's width, so the cumulative cut may miss by a channel
    assert model[0].out_features in (16, 17) and model[2].out_features in (16, 17)
    assert all(torch.isfinite(torch.tensor(history.train_loss)))


def test_prepare_registers_identity_masks() -> None:
    model = _mlp()
    x = torch.randn(3, 16)
    before = model(x)
    Pruner(OneShot(0.5)).prepare(model)
    assert len(masked_tensors(model)) == 3
    assert all(bool(m.all()) for m in masked_tensors(model).values())
    assert torch.equal(model(x), before)


def test_mask_options_validate() -> None:
    with pytest.raises(ConfigError, match="scope"):
        MaskOptions(scope="model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ignore"):
        MaskOptions(ignore="fc")  # type: ignore[arg-type]
