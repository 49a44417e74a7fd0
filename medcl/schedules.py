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

[0] C. You, W. Dai, Y. Min, L. Staib, J. Sekhon, J. S. Duncan, "ACTION++: Improving Semi-supervised Medical
    Image Segmentation with Adaptive Anatomical Contrast", MICCAI 2023, https://arxiv.org/abs/2304.02689
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ScheduleParams", "constant_temperature", "cosine_temperature", "scheduled_temperature"]


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
