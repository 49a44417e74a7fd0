"""The method interface: the pseudo-label Dice diagnostic, schedule targets, and what every method shares."""

from __future__ import annotations

import pytest
import torch

from medcl.methods import DataSpec, build_method
from medcl.methods.base import check_schedule_targets, pseudo_label_dice
from medcl.schedules import ResolvedSteps, ScheduleParams
from medcl.services.configs import build_config

TINY = "model.features=[4, 4, 8, 8, 16, 4]"
SPEC = DataSpec(1, 3, ("background", "Anterior", "Posterior"), 2, (64, 64))


def test_pseudo_label_dice_by_hand() -> None:
    pseudo = torch.tensor([[[0, 1, 1], [2, 2, 0]]])  # (1, 2, 3), K = 3
    label = torch.tensor([[[[0, 1, 0], [2, 2, 2]]]])  # (1, 1, 2, 3)
    # class 1: |P| = 2, |Y| = 1, |P & Y| = 1 -> 2/3; class 2: |P| = 2, |Y| = 3, |P & Y| = 2 -> 4/5.
    assert pseudo_label_dice(pseudo, label, 3).item() == pytest.approx((2 / 3 + 4 / 5) / 2)
    # A class absent from both is left out of the mean; nothing present at all gives 0.
    assert pseudo_label_dice(pseudo, label, 4).item() == pytest.approx((2 / 3 + 4 / 5) / 2)
    empty = torch.zeros(1, 2, 3, dtype=torch.long)
    assert pseudo_label_dice(empty, empty, 3).item() == 0.0


def test_pseudo_label_dice_of_a_2x2x2_batch_pools_its_samples() -> None:
    # Two 3D samples of 2x2x2, K = 3; labels (B, 1, X, Y, Z).
    pseudo = torch.tensor([[[[1, 1], [0, 0]], [[2, 0], [0, 0]]], [[[0, 0], [0, 0]], [[0, 0], [0, 0]]]])
    label = torch.tensor([[[[1, 0], [0, 0]], [[2, 2], [0, 0]]], [[[1, 0], [0, 0]], [[0, 0], [0, 0]]]])
    # Class 1 over the batch: |P| = 2, |Y| = 2, |P & Y| = 1 -> 1/2 (not the mean of 2/3 and 0 per sample).
    # Class 2: |P| = 1, |Y| = 2, |P & Y| = 1 -> 2/3.
    dice = pseudo_label_dice(pseudo, label.unsqueeze(1), 3)
    assert dice.item() == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert dice.dtype == torch.float32 and dice.ndim == 0
    assert pseudo_label_dice(label, label, 3).item() == 1.0


def test_schedule_targets_must_be_losses_of_the_method() -> None:
    check_schedule_targets(ScheduleParams(kind="cosine", applies_to=["anco"]), ("anco", "saacl"))
    with pytest.raises(ValueError) as err:
        check_schedule_targets(ScheduleParams(kind="cosine", applies_to=["anco", "sacl"]), ("anco", "saacl"))
    assert str(err.value) == "schedule.applies_to names ['sacl']; this method's losses are ['anco', 'saacl']"


def test_fractions_of_the_run_become_steps_once() -> None:
    cfg = build_config(
        {"method": {"name": "supervised"}}, [TINY, "train.steps=200", "optim.warmup_steps=0.1"]
    )
    _, steps = type(build_method(cfg, SPEC)).resolve_schedule(cfg)
    assert steps == {"optim.warmup_steps": ResolvedSteps("optim.warmup_steps", 0.1, 20)}
    assert str(steps["optim.warmup_steps"]) == "optim.warmup_steps=20 (0.1 of train.steps)"
    assert build_method(cfg, SPEC).schedule_steps == steps


def test_default_sampler_and_parameter_groups() -> None:
    cfg = build_config({"method": {"name": "fixmatch"}}, [TINY, "data.unlabeled_batch_size=0"])
    method = build_method(cfg, SPEC)
    assert method.build_sampler("unlabeled", [], stream_index=1) is None  # a batch size of 0: no stream
    [group] = method.param_groups()
    assert len(group["params"]) == len(list(method.parameters()))
    first = next(method.parameters())
    first.requires_grad_(False)  # frozen parameters are left out of the optimiser
    [group] = method.param_groups()
    assert len(group["params"]) == len(list(method.parameters())) - 1
    assert all(p is not first for p in group["params"])


def test_a_method_gets_its_typed_params_and_the_run_facts_not_the_config(tmp_path) -> None:
    from medcl.methods import METHODS, RunFacts
    from medcl.methods.supervised import SupervisedParams

    cfg = build_config(
        {"method": {"name": "mcsc"}},
        [TINY, "train.steps=40", "train.seed=3", "optim.lr=0.02", f"output={tmp_path}"],
    )
    method = build_method(cfg, SPEC)
    assert not hasattr(method, "cfg")  # no path from a method to tracking, val or init settings
    assert method.run == RunFacts(40, 3, cfg.model, cfg.data, cfg.optim, tmp_path / "cache")
    assert type(method.params) is type(cfg.method) and method.params.name == "mcsc"
    assert method.params.cps_rampup_steps == 30  # 0.75 of train.steps, resolved once
    with pytest.raises(TypeError, match="needs method params of type MCSCParams, got SupervisedParams"):
        METHODS["mcsc"](SupervisedParams(), RunFacts.of(cfg), SPEC)
