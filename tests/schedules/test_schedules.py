"""Schedules: values at chosen steps equal their formulas; configs round-trip; bad input errors."""

from __future__ import annotations

import json
import math

import pytest

from prunekit.errors import ConfigError
from prunekit.schedules import (
    ConstantSparsity,
    Iterative,
    OneShot,
    PolynomialDecay,
    RigL,
    Schedule,
    cubic,
    from_config,
    get_schedule,
    register_schedule,
)

ALL: list[Schedule] = [
    ConstantSparsity(0.5, begin_step=10, end_step=90, frequency=20),
    OneShot(0.9, step=7),
    Iterative(0.9, cycles=3, cycle_steps=50, begin_step=5),
    PolynomialDecay(0.1, 0.9, begin_step=10, end_step=110, power=2.0, frequency=10),
    RigL(0.9, end_step=300, update_every=25, alpha=0.4, begin_step=0),
]


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: s.name)
def test_config_round_trips_every_field_through_json(schedule: Schedule) -> None:
    config = schedule.to_config()
    assert config["name"] == schedule.name
    again = from_config(json.loads(json.dumps(config)))
    assert again == schedule and type(again) is type(schedule)
    assert type(schedule).from_config(config) == schedule


def test_polynomial_equals_zhu_gupta_formula() -> None:
    s = PolynomialDecay(0.1, 0.9, begin_step=10, end_step=110, power=3.0, frequency=10)
    for t in (10, 20, 35, 60, 110, 500):
        p = min(1.0, max(0.0, (t - 10) / 100))
        assert s.sparsity(t) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - p) ** 3, abs=1e-12)
    assert s(0) == (False, pytest.approx(0.1))
    assert s(20)[0] and not s(25)[0] and s(110) == (True, pytest.approx(0.9))
    assert not s(120)[0]  # after end_step nothing prunes
    # an end step off the frequency grid still prunes, so the target is reached
    assert PolynomialDecay(0.0, 0.8, 0, 95, frequency=10)(95) == (True, pytest.approx(0.8))


def test_cubic_is_power_three() -> None:
    assert cubic(0.0, 0.9, 0, 100, frequency=5) == PolynomialDecay(0.0, 0.9, 0, 100, 3.0, 5)
    assert get_schedule("cubic", initial_sparsity=0.0, final_sparsity=0.9, begin_step=0,
                        end_step=100).power == 3.0
    assert cubic(0.0, 0.9, 0, 100).sparsity(50) == pytest.approx(0.9 * (1 - 0.5**3))


def test_constant_follows_tfmot_frequency_rule() -> None:
    s = ConstantSparsity(0.5, begin_step=10, end_step=90, frequency=20)
    assert [t for t in range(120) if s(t)[0]] == [10, 30, 50, 70, 90]
    assert s(3) == (False, 0.5)
    assert [t for t in range(0, 301, 100) if ConstantSparsity(0.3)(t)[0]] == [0, 100, 200, 300]


def test_one_shot_prunes_once() -> None:
    s = OneShot(0.9, step=7)
    assert [t for t in range(50) if s(t)[0]] == [7]
    assert s(7)[1] == 0.9


def test_iterative_geometric_ratio_per_cycle() -> None:
    s = Iterative(0.9, cycles=3, cycle_steps=50, begin_step=5)
    assert [t for t in range(400) if s(t)[0]] == [5, 55, 105]
    r = 1 - 0.1 ** (1 / 3)
    assert s.ratio_per_step == pytest.approx(r)
    assert s(5)[1] == pytest.approx(r)
    assert s(55)[1] == pytest.approx(1 - (1 - r) ** 2)
    assert s(105)[1] == pytest.approx(0.9) and s(399)[1] == pytest.approx(0.9)
    assert s(0) == (False, 0.0)


def test_rigl_cosine_update_fraction() -> None:
    s = RigL(0.9, end_step=300, update_every=25, alpha=0.4)
    assert s(0) == (True, 0.9) and s(25) == (False, 0.9)
    assert s.update_fraction(0) == 0.0 and s.update_fraction(10) == 0.0
    for t in (25, 100, 275):
        assert s.update_fraction(t) == pytest.approx(0.2 * (1 + math.cos(math.pi * t / 300)))
    assert s.update_fraction(300) == 0.0  # no updates from end_step on
    assert ALL[0].update_fraction(100) == 0.0  # static schedules never regrow


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ConstantSparsity(1.0), "target_sparsity"),
        (lambda: ConstantSparsity(0.5, begin_step=10, end_step=5), "end_step"),
        (lambda: ConstantSparsity(0.5, frequency=0), "frequency"),
        (lambda: PolynomialDecay(0.0, 0.9, 10, 10), "end_step"),
        (lambda: PolynomialDecay(0.0, 0.9, 0, 10, power=0.0), "power"),
        (lambda: Iterative(0.9, cycles=0, cycle_steps=10), "cycles"),
        (lambda: RigL(0.9, end_step=0), "end_step"),
        (lambda: RigL(0.9, end_step=10, alpha=1.5), "alpha"),
        (lambda: from_config({"name": "nope"}), "one_shot"),
        (lambda: from_config({"name": "one_shot", "sparsity": 0.5, "bogus": 1}), "bogus"),
        (lambda: OneShot.from_config({"name": "rigl", "sparsity": 0.5}), "rigl"),
    ],
)
def test_bad_options_raise_config_error(build: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()  # type: ignore[operator]


def test_type_errors_and_negative_step() -> None:
    with pytest.raises(TypeError, match="step"):
        OneShot(0.5, step=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="step"):
        OneShot(0.5)(-1)


def test_register_custom_schedule() -> None:
    from dataclasses import dataclass

    from prunekit.schedules.registry import REGISTRY

    @dataclass(frozen=True)
    class Halfway(Schedule):
        name = "test_halfway"
        at: int = 3

        def __call__(self, step: int) -> tuple[bool, float]:
            return step == self.at, 0.5

    register_schedule(Halfway)
    try:
        assert from_config(Halfway(4).to_config()) == Halfway(4)
        with pytest.raises(ConfigError, match="already registered"):
            register_schedule(Halfway)
    finally:
        REGISTRY._classes.pop("test_halfway")
