"""Temperature schedules (ACTION++ ATS): endpoints, minimum, period fraction, per-epoch steps, config checks."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from medcl.schedules import ScheduleParams, constant_temperature, cosine_temperature, scheduled_temperature


def test_constant_is_a_python_float() -> None:
    value = constant_temperature(7, 100, 0.5)
    assert value == 0.5 and type(value) is float


def test_cosine_endpoints_and_minimum_at_mid_period() -> None:
    total = 1000
    assert cosine_temperature(0, total, 0.1, 1.0) == pytest.approx(1.0)
    assert cosine_temperature(500, total, 0.1, 1.0) == pytest.approx(0.1)
    assert cosine_temperature(1000, total, 0.1, 1.0) == pytest.approx(1.0)
    # The formula at a quarter period: tau_min + 0.5 (1 + cos(pi / 2)) (tau_max - tau_min).
    assert cosine_temperature(250, total, 0.1, 1.0) == pytest.approx(0.55)
    values = [cosine_temperature(t, total, 0.1, 1.0) for t in range(total + 1)]
    assert min(values) == pytest.approx(0.1) and values.index(min(values)) == 500
    assert all(0.1 - 1e-12 <= v <= 1.0 + 1e-12 for v in values)
    assert all(type(v) is float for v in values[:3])


def test_period_fraction_gives_several_cycles() -> None:
    total = 1000
    # period 0.1: T = 100 steps, ten cycles; minima at 50, 150, ...
    for t in (0, 100, 900):
        assert cosine_temperature(t, total, 0.07, 1.0, period=0.1) == pytest.approx(1.0)
    for t in (50, 150, 950):
        assert cosine_temperature(t, total, 0.07, 1.0, period=0.1) == pytest.approx(0.07)
    # period 2.0: half a cycle over training, the minimum at the very end.
    assert cosine_temperature(1000, total, 0.1, 1.0, period=2.0) == pytest.approx(0.1)


def test_per_epoch_is_constant_within_an_epoch() -> None:
    total, epoch = 1000, 10  # 100 epochs
    kwargs = dict(period=1.0, per="epoch", steps_per_epoch=epoch)
    within = {cosine_temperature(t, total, 0.1, 1.0, **kwargs) for t in range(500, 510)}
    assert len(within) == 1
    assert cosine_temperature(500, total, 0.1, 1.0, **kwargs) == pytest.approx(0.1)  # epoch 50 of 100
    expected = 0.1 + 0.5 * (1 + math.cos(2 * math.pi * 25 / 100)) * 0.9
    assert cosine_temperature(259, total, 0.1, 1.0, **kwargs) == pytest.approx(expected)


def test_bad_arguments_fail_with_a_message() -> None:
    with pytest.raises(ValueError, match="steps_per_epoch"):
        cosine_temperature(0, 10, 0.1, 1.0, per="epoch")
    with pytest.raises(ValueError, match="tau_min"):
        cosine_temperature(0, 10, 1.0, 0.1)
    with pytest.raises(ValidationError, match="steps_per_epoch"):
        ScheduleParams(kind="cosine", per="epoch")


def test_scheduled_temperature_applies_only_to_named_losses() -> None:
    sched = ScheduleParams(kind="cosine", tau_min=0.1, tau_max=1.0, applies_to=["anco"])
    assert scheduled_temperature(sched, "anco", 0.5, 50, 100) == pytest.approx(0.1)
    assert scheduled_temperature(sched, "saacl", 0.07, 50, 100) == 0.07
    # tau_min null: each loss's own temperature is its lower bound (the authors' code).
    own = ScheduleParams(kind="cosine", tau_min=None, applies_to=["anco", "saacl"])
    assert scheduled_temperature(own, "saacl", 0.07, 50, 100) == pytest.approx(0.07)
    assert scheduled_temperature(own, "saacl", 0.07, 0, 100) == pytest.approx(1.0)
    assert scheduled_temperature(ScheduleParams(), "anco", 0.5, 50, 100) == 0.5
