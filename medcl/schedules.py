"""Temperature schedules: pure functions of the step that return a Python ``float``.

ACTION++ [0] replaces the fixed temperature of its contrastive losses by an "anatomical temperature
scheduler" (ATS), a cosine between a lower and an upper bound (the ATS formula of [0]):

    tau_t = tau_min + 0.5 * (1 + cos(2 * pi * t / T)) * (tau_max - tau_min)

so tau starts at ``tau_max``, falls to ``tau_min`` half a period later and is back at ``tau_max`` after one
period ``T``. The paper's best setting is ``tau_min = 0.1``, ``tau_max = 1.0`` and ``T`` equal to the number
of iterations (one period over training, ``t`` the iteration). The authors' code instead updates ``tau``
once per epoch with ``T = 0.1 * max_epoch`` (ten periods) and ``tau_min = 0.07`` for SAACL; both variants are
reachable here (``per: epoch``, ``period: 0.1``, ``tau_min: null``).

The value is a plain ``float`` (never a tensor or a NumPy scalar) so that it can be logged as ``train/tau``
and stored in a checkpoint that ``torch.load(weights_only=True)`` reads back.

Step counts that scale with the run: every step-count hyperparameter of a schedule (``optim.warmup_steps``,
MCSC's ``cps_rampup_steps``, ``contrast_warmup_steps`` and per-network ``warmup_steps``, ACTION++'s
``stage1_steps``, ...) is a :data:`StepCount`. The rule is the type of the number as written:

* an **integer** (``3000``) is an absolute number of steps, kept whatever ``train.steps`` is;
* a **decimal number** in ``[0, 1]`` (``0.05``, ``1.0``) is a fraction of ``train.steps``, so ``--steps N``
  scales it; it becomes ``round(fraction * train.steps)`` steps (halves round up).

A decimal outside ``[0, 1]`` (``3000.0``) is an error, so a value never means two things. Each method
resolves its keys once, at construction, with :func:`resolve_step_fields` (which calls
:func:`resolve_steps`); the trainer logs the absolute values and warns once about any that does not end
before the last step (:func:`report_schedule`).

[0] C. You, W. Dai, Y. Min, L. Staib, J. Sekhon, J. S. Duncan, "ACTION++: Improving Semi-supervised Medical
    Image Segmentation with Adaptive Anatomical Contrast", MICCAI 2023, https://arxiv.org/abs/2304.02689
"""

from __future__ import annotations

import logging
import math
import numbers
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, model_validator
from pydantic.fields import FieldInfo

__all__ = [
    "ResolvedSteps",
    "ScheduleParams",
    "StepCount",
    "constant_temperature",
    "cosine_temperature",
    "report_schedule",
    "resolve_step_fields",
    "resolve_steps",
    "scheduled_temperature",
]

log = logging.getLogger(__name__)


class ScheduleParams(BaseModel):
    """``method.schedule`` of the ACTION/ACTION++ methods: which temperature schedule and where it applies.

    ``kind: constant`` keeps every loss at its own ``temperature``; ``kind: cosine`` is ATS for the losses
    named in ``applies_to`` (others stay constant).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["constant", "cosine"] = Field(
        "constant", description="constant: each loss keeps its own temperature; cosine: ATS of ACTION++."
    )
    tau_min: float | None = Field(
        0.1,
        gt=0,
        description="Lower bound tau^- (paper: 0.1); null: each scheduled loss's own temperature is its "
        "lower bound (the authors' code: 0.07 SAACL, 0.1 AnCo, tau_s/tau_t for the pretraining KL).",
    )
    tau_max: float = Field(1.0, gt=0, description="Upper bound tau^+ (paper: 1.0); tau starts here.")
    period: float = Field(
        1.0, gt=0, description="Period T as a fraction of training (paper: 1.0 = one cycle; code: 0.1)."
    )
    per: Literal["step", "epoch"] = Field(
        "step", description="step: t is the iteration (paper); epoch: tau changes once per epoch (code)."
    )
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Steps in one epoch when per: epoch (e.g. labeled slices / batch size)."
    )
    applies_to: list[str] = Field(
        default_factory=list,
        description="Losses whose temperature follows the schedule, e.g. [anco, saacl] or "
        "[kl_student, kl_teacher].",
    )

    @model_validator(mode="after")
    def _check(self) -> ScheduleParams:
        if self.per == "epoch" and self.steps_per_epoch is None:
            raise ValueError("schedule.per is 'epoch': set schedule.steps_per_epoch (steps in one epoch)")
        if self.tau_min is not None and self.tau_min > self.tau_max:
            raise ValueError(
                f"schedule.tau_min ({self.tau_min}) must not exceed schedule.tau_max ({self.tau_max})"
            )
        return self


def constant_temperature(step: int, total_steps: int, tau: float) -> float:
    """The constant schedule: ``tau`` at every step (ACTION, and ACTION++ without ATS).

    Args:
        step: Optimiser steps done (0-based); unused.
        total_steps: Steps of the whole run; unused.
        tau: The temperature.

    Returns:
        ``float(tau)``.
    """
    del step, total_steps
    return float(tau)


def cosine_temperature(
    step: int,
    total_steps: int,
    tau_min: float,
    tau_max: float,
    *,
    period: float = 1.0,
    per: Literal["step", "epoch"] = "step",
    steps_per_epoch: int | None = None,
) -> float:
    """ATS of ACTION++ [0]: ``tau_min + 0.5 (1 + cos(2 pi t / T)) (tau_max - tau_min)``.

    Args:
        step: Optimiser steps done (0-based): ``t`` for ``per="step"``, ``step // steps_per_epoch`` for
            ``per="epoch"``.
        total_steps: Steps of the whole run. ``T = period * total_steps`` (per step) or
            ``T = period * ceil(total_steps / steps_per_epoch)`` (per epoch, the code's ``P * max_epoch``).
        tau_min: Lower bound, reached at half a period.
        tau_max: Upper bound, the value at ``t = 0`` and after every full period.
        period: ``T`` as a fraction of training: 1.0 gives one cycle, 0.1 ten.
        per: ``"step"`` (the paper) or ``"epoch"`` (the authors' code).
        steps_per_epoch: Steps in one epoch; required for ``per="epoch"``.

    Returns:
        The temperature as a Python float.

    Raises:
        ValueError: On non-positive steps, period or temperatures, ``tau_min > tau_max``, or a missing
            ``steps_per_epoch``.

    Example:
        >>> cosine_temperature(0, 100, 0.1, 1.0), cosine_temperature(50, 100, 0.1, 1.0)
        (1.0, 0.1)
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1; got {total_steps}.")
    if period <= 0:
        raise ValueError(f"period must be positive (a fraction of training, e.g. 1.0); got {period}.")
    if not 0 < tau_min <= tau_max:
        raise ValueError(f"need 0 < tau_min <= tau_max; got tau_min={tau_min}, tau_max={tau_max}.")
    if per == "epoch":
        if not steps_per_epoch or steps_per_epoch < 1:
            raise ValueError("per='epoch' needs steps_per_epoch >= 1 (steps in one epoch).")
        t = step // steps_per_epoch
        length = math.ceil(total_steps / steps_per_epoch)
    elif per == "step":
        t, length = step, total_steps
    else:
        raise ValueError(f"per must be 'step' or 'epoch'; got {per!r}.")
    big_t = period * length
    value = tau_min + 0.5 * (1.0 + math.cos(2.0 * math.pi * t / big_t)) * (tau_max - tau_min)
    # A Python float: NumPy or tensor scalars would break weights_only checkpoint loading and logging.
    return float(value)


def scheduled_temperature(
    schedule: ScheduleParams, loss: str, base: float, step: int, total_steps: int
) -> float:
    """The temperature of one named loss at ``step`` under a ``method.schedule`` section.

    Args:
        schedule: The parsed ``method.schedule``.
        loss: The loss's name as used in ``schedule.applies_to`` (e.g. ``"anco"``).
        base: The loss's own (constant) temperature; also its lower bound when ``schedule.tau_min`` is null.
        step: Optimiser steps done (0-based).
        total_steps: Steps of the whole run.

    Returns:
        ``base`` unless the schedule is cosine and names ``loss``; then the ATS value.
    """
    if schedule.kind == "constant" or loss not in schedule.applies_to:
        return constant_temperature(step, total_steps, base)
    low = base if schedule.tau_min is None else schedule.tau_min
    return cosine_temperature(
        step,
        total_steps,
        min(low, schedule.tau_max),
        schedule.tau_max,
        period=schedule.period,
        per=schedule.per,
        steps_per_epoch=schedule.steps_per_epoch,
    )


# ------------------------------------------------------------------------------------------ step counts


class _FractionOfRun:
    """Marker in a :data:`StepCount` annotation, found by :func:`resolve_step_fields`."""


def _check_step_count(value: Any) -> int | float:
    """Validate a :data:`StepCount`: an integer >= 0 (steps) or a decimal in ``[0, 1]`` (fraction of the run)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            "expected a step count: an integer number of steps (e.g. 3000) or a decimal fraction of "
            "train.steps (e.g. 0.05)"
        )
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise ValueError("a step count must be 0 or more")
        return int(value)
    if not 0.0 <= float(value) <= 1.0:  # also rejects NaN
        raise ValueError(
            "a decimal number is a fraction of train.steps and must lie in [0, 1]; write an absolute "
            "number of steps as an integer (e.g. 3000, not 3000.0)"
        )
    return float(value)


#: A step count that may scale with the run: ``int`` >= 0 = absolute steps, ``float`` in [0, 1] = fraction of
#: ``train.steps`` (see the module docstring). Resolve it with :func:`resolve_steps`.
StepCount = Annotated[int | float, PlainValidator(_check_step_count), _FractionOfRun()]


def resolve_steps(value: int | float, total_steps: int) -> int:
    """The absolute number of steps of a :data:`StepCount` in a run of ``total_steps`` steps.

    Args:
        value: An ``int`` (absolute steps, returned as is) or a ``float`` fraction of the run.
        total_steps: ``train.steps``.

    Returns:
        ``value`` for an int; ``round(value * total_steps)`` (halves up) for a float.

    Example:
        >>> resolve_steps(0.75, 1500), resolve_steps(30000, 1500)
        (1125, 30000)
    """
    if isinstance(value, float):
        # floor(x + 0.5), not round(): Python rounds halves to even, which would make 0.5 of 5 and 7 differ.
        return int(math.floor(value * total_steps + 0.5))
    return int(value)


@dataclass(frozen=True)
class ResolvedSteps:
    """One step-count key of a run: as written in the config, and in steps."""

    key: str
    given: int | float
    steps: int

    def __str__(self) -> str:
        if isinstance(self.given, float):
            return f"{self.key}={self.steps} ({self.given:g} of train.steps)"
        return f"{self.key}={self.steps}"


def _is_step_count(field: FieldInfo) -> bool:
    """Whether a field is a :data:`StepCount` (possibly ``StepCount | None``)."""

    def marked(tp: Any) -> bool:
        if typing.get_origin(tp) is Annotated:
            if any(isinstance(m, _FractionOfRun) for m in tp.__metadata__):
                return True
        return any(marked(arg) for arg in typing.get_args(tp))

    return any(isinstance(m, _FractionOfRun) for m in field.metadata) or marked(field.annotation)


M = TypeVar("M", bound=BaseModel)


def resolve_step_fields(section: M, total_steps: int, prefix: str) -> tuple[M, dict[str, ResolvedSteps]]:
    """Resolve every :data:`StepCount` of a config section (nested sections included) against the run.

    Args:
        section: A parsed section, e.g. a method's ``Params`` or ``OptimConfig``.
        total_steps: ``train.steps``.
        prefix: Dotted name of the section (``"method"``, ``"optim"``), for the keys of the result.

    Returns:
        A copy of ``section`` whose step counts are absolute ``int`` steps (``None`` stays ``None``), and
        ``{dotted key: ResolvedSteps}`` for each of them.
    """
    updates: dict[str, Any] = {}
    found: dict[str, ResolvedSteps] = {}
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        key = f"{prefix}.{name}"
        if isinstance(value, BaseModel):
            inner, inner_found = resolve_step_fields(value, total_steps, key)
            if inner_found:
                updates[name] = inner
                found.update(inner_found)
        elif value is not None and _is_step_count(field):
            steps = resolve_steps(value, total_steps)
            found[key] = ResolvedSteps(key, value, steps)
            updates[name] = steps
    # model_copy does not validate: the resolved ints are valid StepCounts anyway.
    return (section.model_copy(update=updates) if updates else section), found


def report_schedule(resolved: Mapping[str, ResolvedSteps], total_steps: int) -> dict[str, int]:
    """Log a run's resolved step counts and warn once if any does not end before the run does.

    A ramp or warm-up of ``train.steps`` steps or more never reaches its end: the method silently runs in
    its warm-up state (e.g. ``--steps 1500`` with ``cps_rampup_steps: 30000`` ends with the CPS weight at
    11% of its target). One warning names every such key with its value and ``train.steps``.

    Args:
        resolved: ``{dotted key: ResolvedSteps}`` (``Method.schedule_steps``).
        total_steps: ``train.steps``.

    Returns:
        MLflow params: ``{"<key>_resolved": steps}``.
    """
    if not resolved:
        return {}
    log.info("schedule over train.steps=%d: %s", total_steps, ", ".join(map(str, resolved.values())))
    late = [r for r in resolved.values() if r.steps > 0 and r.steps >= total_steps]
    if late:
        absolute = any(not isinstance(r.given, float) for r in late)
        log.warning(
            "the schedule does not complete within train.steps=%d: %s %s not end before the last step, so "
            "the method stays in its warm-up/ramp/first stage for the whole run. %s",
            total_steps,
            ", ".join(map(str, late)),
            "does" if len(late) == 1 else "do",
            "Give step counts as fractions of train.steps (a decimal, e.g. 0.75) so that they scale with "
            "--steps, or lower them."
            if absolute
            else "Use a fraction below 1.",
        )
    return {f"{r.key}_resolved": r.steps for r in resolved.values()}
