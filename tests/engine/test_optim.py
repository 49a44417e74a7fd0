"""The optimiser and the learning-rate schedule of the ``optim`` section: factors at hand-computed steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medcl.config import OptimConfig
from medcl.engine.optim import build_optimizer, build_scheduler, lr_factor


def test_lr_schedules() -> None:
    poly = OptimConfig(schedule="poly", poly_power=0.9, warmup_steps=0)
    assert lr_factor(0, 100, poly) == 1.0
    assert lr_factor(50, 100, poly) == pytest.approx(0.5**0.9)
    assert lr_factor(100, 100, poly) == 0.0
    cos = OptimConfig(schedule="cosine", warmup_steps=10)
    assert lr_factor(0, 110, cos) == pytest.approx(0.1)
    assert lr_factor(9, 110, cos) == pytest.approx(1.0)
    assert lr_factor(60, 110, cos) == pytest.approx(0.5)
    assert lr_factor(5, 10, OptimConfig(schedule="constant")) == 1.0
    assert isinstance(lr_factor(3, 10, poly), float)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.1),  # warm-up: (step + 1) / 10, the 10 steps being 0.1 of 100
        (4, 0.5),
        (9, 1.0),
        (10, 1.0),  # t = 0 after warm-up
        (55, 0.25),  # t = (55 - 10) / 90 = 0.5 -> (1 - 0.5) ** 2
        (100, 0.0),
        (130, 0.0),  # past the end: t is clamped to 1
    ],
)
def test_poly_after_a_fractional_warmup(step: int, expected: float) -> None:
    cfg = OptimConfig(schedule="poly", poly_power=2.0, warmup_steps=0.1)
    assert lr_factor(step, 100, cfg) == pytest.approx(expected)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.25), (3, 1.0), (4, 1.0), (12, 0.5), (20, 0.0)])
def test_cosine_after_a_warmup_in_steps(step: int, expected: float) -> None:
    # 4 warm-up steps of 20; then t = (step - 4) / 16 and the factor is (1 + cos(pi t)) / 2.
    cfg = OptimConfig(schedule="cosine", warmup_steps=4)
    assert lr_factor(step, 20, cfg) == pytest.approx(expected)


def test_optimizer_follows_the_config_and_a_group_keeps_its_own_lr() -> None:
    net = torch.nn.Linear(2, 2)
    groups = [{"params": [net.weight]}, {"params": [net.bias], "lr": 0.5}]
    adamw = build_optimizer(groups, OptimConfig(lr=0.1, weight_decay=0.01))
    assert type(adamw) is torch.optim.AdamW
    assert [g["lr"] for g in adamw.param_groups] == [0.1, 0.5]
    assert adamw.defaults["weight_decay"] == 0.01
    assert type(build_optimizer([{"params": [net.weight]}], OptimConfig(name="adam"))) is torch.optim.Adam
    sgd = build_optimizer([{"params": [net.weight]}], OptimConfig(name="sgd", lr=0.01, momentum=0.8))
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["momentum"], sgd.defaults["nesterov"]) == (0.8, True)


def test_a_group_with_its_own_warmup_warms_up_alone(tmp_path: Path) -> None:
    """MCSC's Transformer group: ``warmup_steps: 0.5`` of 10 steps is 5 steps; the other group uses 2."""
    net = torch.nn.Linear(2, 2)
    groups = [{"params": [net.weight]}, {"params": [net.bias], "lr": 0.5, "warmup_steps": 0.5}]
    cfg = OptimConfig(lr=0.1, schedule="constant", warmup_steps=2)
    opt = build_optimizer(groups, cfg)
    scheduler = build_scheduler(opt, 10, cfg)
    seen = []
    for _ in range(6):
        seen.append([round(g["lr"], 6) for g in opt.param_groups])
        opt.step()
        scheduler.step()
    assert seen == [[0.05, 0.1], [0.1, 0.2], [0.1, 0.3], [0.1, 0.4], [0.1, 0.5], [0.1, 0.5]]
    # The scheduler's state holds no pydantic object: checkpoints load with weights_only=True.
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")
    torch.load(tmp_path / "scheduler.pt", weights_only=True)
