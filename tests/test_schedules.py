"""Temperature schedules (ACTION++ ATS): endpoints, minimum, period fraction, per-epoch steps, config checks.

Step counts as fractions of train.steps: resolution, absolute counts kept, the incomplete-schedule warning,
and every shipped config's schedule scaling with ``--steps``.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, ValidationError

from medcl.commands.common import add_training_flags, config_from_args
from medcl.errors import ConfigError
from medcl.methods import METHODS
from medcl.schedules import (
    ScheduleParams,
    StepCount,
    constant_temperature,
    cosine_temperature,
    report_schedule,
    resolve_step_fields,
    resolve_steps,
    scheduled_temperature,
)
from medcl.services.configs import build_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*/*.yaml"))


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


# ------------------------------------------------------------------------------------------ step counts


class _Inner(BaseModel):
    warmup: StepCount | None = None


class _Section(BaseModel):
    ramp: StepCount = Field(0.75)
    other: int = 7
    inner: _Inner = Field(default_factory=_Inner)


def test_fractions_resolve_against_the_run_and_integers_stay_absolute() -> None:
    assert resolve_steps(0.75, 1500) == 1125 and resolve_steps(0.075, 6000) == 450
    assert resolve_steps(0.5, 5) == 3 and resolve_steps(0.5, 7) == 4  # halves round up, not to even
    assert resolve_steps(1.0, 1500) == 1500 and resolve_steps(0.0, 1500) == 0
    assert resolve_steps(30000, 1500) == 30000 and resolve_steps(1, 1500) == 1
    section = _Section.model_validate({"inner": {"warmup": 300}})
    resolved, found = resolve_step_fields(section, 2000, "method")
    assert resolved.ramp == 1500 and resolved.inner.warmup == 300 and resolved.other == 7
    assert section.ramp == 0.75  # the parsed config keeps the fraction as written
    assert {k: (r.given, r.steps) for k, r in found.items()} == {
        "method.ramp": (0.75, 1500),
        "method.inner.warmup": (300, 300),
    }
    # null (a per-network warm-up falling back to optim's) is not a step count of the run.
    _, found = resolve_step_fields(_Section(), 2000, "method")
    assert list(found) == ["method.ramp"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (3000.0, "fraction of train.steps and must lie in"),
        (1.5, "fraction of train.steps and must lie in"),
        (-0.1, "fraction of train.steps and must lie in"),
        (-3, "0 or more"),
        (True, "expected a step count"),
        ("3000", "expected a step count"),
    ],
)
def test_a_step_count_is_an_integer_or_a_fraction_never_both(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _Section(ramp=value)
    # Through the config, the error names the key.
    with pytest.raises(ConfigError, match=r"'method.cps_rampup_steps'.*" + message):
        build_config({"method": {"name": "mcsc", "cps_rampup_steps": value}})


def test_an_incomplete_schedule_warns_once_naming_keys_and_values(caplog: pytest.LogCaptureFixture) -> None:
    cfg = build_config(
        {"method": {"name": "mcsc"}},
        ["train.steps=1500", "method.cps_rampup_steps=30000", "method.contrast_warmup_steps=3000"],
    )
    _, steps = METHODS["mcsc"].resolve_schedule(cfg)
    with caplog.at_level(logging.INFO, logger="medcl.schedules"):
        params = report_schedule(steps, cfg.train.steps)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "train.steps=1500" in warnings[0]
    assert (
        "method.cps_rampup_steps=30000" in warnings[0] and "method.contrast_warmup_steps=3000" in warnings[0]
    )
    assert "optim.warmup_steps" not in warnings[0]  # 0: nothing to complete
    assert params["method.cps_rampup_steps_resolved"] == 30000
    assert "method.transformer.warmup_steps_resolved" not in params  # null: the network uses optim's
    # The info line gives every resolved value, fractions with what they were.
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("optim.warmup_steps=0" in line for line in info)
    caplog.clear()
    # The same run with fractions: nothing to warn about.
    _, steps = METHODS["mcsc"].resolve_schedule(
        build_config({"method": {"name": "mcsc"}}, ["train.steps=1500"])
    )
    with caplog.at_level(logging.WARNING, logger="medcl.schedules"):
        params = report_schedule(steps, 1500)
    assert not caplog.records
    assert params["method.cps_rampup_steps_resolved"] == 1125


def _training_config(path: Path, *flags: str):
    """The config ``medcl train PATH FLAGS`` builds (the real --steps path)."""
    parser = argparse.ArgumentParser()
    add_training_flags(parser)
    return config_from_args(parser.parse_args([str(path), *flags]))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_steps_flag_scales_every_shipped_schedule(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    own = _training_config(path)
    method = METHODS[own.method_name]
    _, at_own = method.resolve_schedule(own)
    for steps in (own.train.steps // 4, 1500):
        cfg = _training_config(path, "--steps", str(steps))
        assert cfg.train.steps == steps
        _, resolved = method.resolve_schedule(cfg)
        assert resolved.keys() == at_own.keys()
        for key, r in resolved.items():
            # Every non-zero step count is a fraction, proportional to train.steps ...
            if at_own[key].steps:
                assert isinstance(r.given, float), f"{path.name}: {key} is absolute ({r.given})"
            assert r.steps == resolve_steps(r.given, steps)
            assert abs(r.steps / steps - at_own[key].steps / own.train.steps) <= 1 / steps
        # ... so no shortened run of a shipped config leaves its schedule unfinished.
        with caplog.at_level(logging.WARNING, logger="medcl.schedules"):
            report_schedule(resolved, steps)
        assert not caplog.records, caplog.text


# The step counts the shipped configs had in steps before they became fractions: same values at their own
# train.steps.
SHIPPED_STEPS = {
    "acdc/mcsc.yaml": {
        "method.transformer.warmup_steps": 2000,
        "method.cps_rampup_steps": 30000,
        "method.contrast_warmup_steps": 3000,
    },
    "hippocampus/mcsc.yaml": {
        "method.transformer.warmup_steps": 300,
        "method.cps_rampup_steps": 4500,
        "method.contrast_warmup_steps": 450,
    },
    "la2018/mcsc.yaml": {
        "method.transformer.warmup_steps": 300,
        "method.cps_rampup_steps": 4500,
        "method.contrast_warmup_steps": 450,
    },
    "acdc/actionpp_pretrain.yaml": {"method.stage1_steps": 5000},
    "hippocampus/actionpp_pretrain.yaml": {"method.stage1_steps": 500},
    "la2018/actionpp_pretrain.yaml": {"method.stage1_steps": 2500},
    "hippocampus/supervised.yaml": {"optim.warmup_steps": 50},
    "hippocampus/demo.yaml": {"optim.warmup_steps": 50},
}


@pytest.mark.parametrize("name", sorted(SHIPPED_STEPS))
def test_shipped_fractions_equal_the_former_step_counts(name: str) -> None:
    cfg = _training_config(CONFIGS[0].parents[1] / name)
    _, resolved = METHODS[cfg.method_name].resolve_schedule(cfg)
    assert {k: resolved[k].steps for k in SHIPPED_STEPS[name]} == SHIPPED_STEPS[name]
    # --steps 1500 with the MCSC configs: the CPS ramp ends at 1125, not at 30000 / 4500.
    if "cps_rampup_steps" in str(SHIPPED_STEPS[name]):
        short = _training_config(CONFIGS[0].parents[1] / name, "--steps", "1500")
        assert METHODS["mcsc"].resolve_schedule(short)[1]["method.cps_rampup_steps"].steps == 1125


def test_old_configs_with_null_stage1_steps_still_mean_half() -> None:
    cfg = build_config({"method": {"name": "pretrain_actionpp", "stage1_steps": None}}, ["train.steps=1000"])
    params, _ = METHODS["pretrain_actionpp"].resolve_schedule(cfg)
    assert params.stage1_steps == 500
