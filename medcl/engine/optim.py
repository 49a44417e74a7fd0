"""Optimiser and learning-rate schedule from the ``optim`` config section."""

from __future__ import annotations

import math
from typing import Any

import torch

from medcl.config import OptimConfig
from medcl.schedules import resolve_steps


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD over parameter groups (a group may carry its own ``lr``)."""
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total`` steps.

    Linear warm-up over ``warmup_steps`` (steps, or a fraction of ``total``), then ``poly``:
    ``(1 - t) ** poly_power`` (nnU-Net, SSL4MIS), ``cosine``: ``(1 + cos(pi t)) / 2``, or ``constant``, with ``t``
    going from 0 to 1 after warm-up.
    """
    warmup = resolve_steps(cfg.warmup_steps, total)
    if warmup and step < warmup:
        return float(step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if cfg.schedule == "poly":
        return float((1.0 - t) ** cfg.poly_power)
    if cfg.schedule == "cosine":
        return float(0.5 * (1.0 + math.cos(math.pi * t)))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, cfg: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor`; stepped once per optimiser step.

    A parameter group holding a ``warmup_steps`` key gets its own warm-up length (MCSC warms up its
    Transformer only); every other group uses ``cfg.warmup_steps``. Either may be a fraction of ``total``.
    """
    configs = [
        cfg.model_copy(update={"warmup_steps": resolve_steps(g["warmup_steps"], total)})
        if "warmup_steps" in g
        else cfg
        for g in optimizer.param_groups
    ]

    def factor_of(group_cfg: OptimConfig):
        # Plain closures, not callable objects: LambdaLR would put an object's __dict__ (a pydantic model)
        # into the checkpoint, which torch.load(weights_only=True) refuses.
        def factor(step: int) -> float:
            return lr_factor(step, total, group_cfg)

        return factor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_of(c) for c in configs])
