"""ACTION/ACTION++ stage 3 on real ACDC slices (64x64, small networks): every term, EMA, state, settings."""

from __future__ import annotations

import math

import pytest
import torch

from medcl.errors import ConfigError
from medcl.services.configs import build_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_actionpp_steps_give_every_term_and_the_teacher_moves_only_by_ema(acdc) -> None:
    method, samplers, opt = acdc.setup(
        "actionpp", *acdc.FAST3, "method.schedule.kind=cosine", "method.schedule.applies_to=[anco, saacl]"
    )
    assert all(not p.requires_grad for p in method.teacher.parameters())
    for step in range(2):
        batch = acdc.batch(samplers, step)
        image = batch["unlabeled"]["image"].clone()
        teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
        queued = int(method.saacl_queue.count)
        out = method(batch, step)
        assert int(method.saacl_queue.count) == queued  # the step's keys wait for on_step_end
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.on_step_end(step)
        assert int(method.saacl_queue.count) > queued
        acdc.assert_finite(out, {"loss", "sup", "unsup", "anco", "saacl", "tau", "tau_anco", "tau_saacl"})
        # ATS (tau_min 0.1, tau_max 1, one period over the default 2000 steps): train/tau at this step.
        assert out["tau"] == pytest.approx(0.1 + 0.45 * (1 + math.cos(2 * math.pi * step / 2000)))
        assert torch.equal(batch["unlabeled"]["image"], image)  # the strong view is a new tensor
        student = method.net.state_dict()
        for k, v in method.teacher.state_dict().items():
            if v.is_floating_point():
                assert torch.allclose(v, 0.99 * teacher_before[k] + 0.01 * student[k], atol=1e-6), k
        assert all(p.grad is None for p in method.teacher.parameters())
        assert all(p.grad is None for p in method.teacher_rep_head.parameters())
    assert int(method.saacl_queue.count) > 0


def test_actionpp_state_dict_round_trip_keeps_centers_and_queue(acdc) -> None:
    method, samplers, opt = acdc.setup("actionpp", *acdc.FAST3)
    acdc.step(method, opt, acdc.batch(samplers, 0), 0)
    assert method.centers.class_means.abs().sum() > 0
    state = method.state_dict()
    assert {"centers.centers", "centers.class_means", "centers.assignment", "saacl_queue.keys"} <= set(state)
    fresh, _, _ = acdc.setup("actionpp", *acdc.FAST3)
    fresh.load_state_dict(state)
    for key in (
        "centers.class_means",
        "centers.assignment",
        "saacl_queue.keys",
        "saacl_queue.labels",
        "teacher.net.conv_0.conv_0.conv.weight",
    ):
        assert torch.equal(fresh.state_dict()[key], state[key]), key
    cos = method.centers.centers @ method.centers.centers.T  # 4 classes, rep_dim 16: the regular simplex
    assert torch.allclose(cos, torch.full((4, 4), -1 / 3).fill_diagonal_(1.0), atol=1e-5)


def test_init_without_teacher_weights_copies_the_student(acdc) -> None:
    method, _, _ = acdc.setup("actionpp", *acdc.FAST3)
    donor = {k: torch.randn_like(v) for k, v in method.net.state_dict().items() if v.is_floating_point()}
    method.load_state_dict({f"net.{k}": v for k, v in donor.items()}, strict=False)  # what --init does
    for k, v in method.teacher.state_dict().items():
        assert torch.equal(v, method.net.state_dict()[k]), k


def test_zero_weights_skip_terms_mean_teacher_and_action(acdc) -> None:
    mt, samplers, opt = acdc.setup("actionpp", "method.anco.weight=0", "method.saacl.weight=0")
    assert mt.rep_head is None and mt.centers is None
    out = acdc.step(mt, opt, acdc.batch(samplers, 0), 0)
    acdc.assert_finite(out, {"loss", "sup", "unsup", "tau"})
    assert "anco" not in out and "saacl" not in out
    action, samplers, opt = acdc.setup(
        "actionpp",
        *acdc.FAST3,
        "method.saacl.weight=0",
        "method.schedule.kind=constant",
        "method.mix=cutmix",
        "method.saacl.denominator=batch",
    )
    assert action.centers is None and action.teacher_rep_head is None
    out = acdc.step(action, opt, acdc.batch(samplers, 0), 0)
    assert "anco" in out and "saacl" not in out and out["tau"] == 0.5


@pytest.mark.parametrize("rep_head", ["stack", "pyramid"])
def test_saacl_batch_denominator_and_rep_scale(acdc, rep_head) -> None:
    method, samplers, opt = acdc.setup(
        "actionpp",
        *acdc.FAST3,
        "method.saacl.denominator=batch",
        "method.rep_scale=2",
        f"method.rep_head={rep_head}",
        "method.unsup_weighting=mask",
        "method.inference=teacher",
    )
    assert method.saacl_queue is None and method.inference_network() is method.teacher
    assert (
        type(method.rep_head).__name__
        == {"stack": "RepresentationHead", "pyramid": "PyramidRepresentationHead"}[rep_head]
    )
    assert type(method.teacher_rep_head) is type(method.rep_head)
    out = acdc.step(method, opt, acdc.batch(samplers, 0), 0)
    acdc.assert_finite(out, {"anco", "saacl", "unsup"})
    assert method.pending_pushes == []  # no queue, nothing pushed


def test_unsup_loss_fraction_mask_and_dice_ce_weightings_by_hand(acdc) -> None:
    method, _, _ = acdc.setup("actionpp", "method.anco.weight=0", "method.saacl.weight=0")
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2): K = 2, two pixels
    pseudo = torch.tensor([[[0, 1]]])
    conf = torch.tensor([[[0.99, 0.5]]])  # only pixel 0 reaches pseudo_threshold 0.97
    ce = [-math.log(math.exp(2) / (math.exp(2) + 1)), math.log(2)]
    # fraction: every pixel's CE times the image's confident fraction (1/2), over the pixels with CE > 0.
    assert method.unsup_loss(logits, pseudo, conf).item() == pytest.approx((ce[0] + ce[1]) / 2 / 2, rel=1e-6)
    method.params = method.params.model_copy(update={"unsup_weighting": "mask"})
    assert method.unsup_loss(logits, pseudo, conf).item() == pytest.approx(ce[0], rel=1e-6)  # confident only
    # dice_ce, the confident pixel pseudo-labelled foreground (class 1): ce_weight * its CE over both pixels +
    # dice_weight * class 1's Dice on it alone (background left out; MONAI's smoothing 1e-5 on both sides).
    method.params = method.params.model_copy(update={"unsup_weighting": "dice_ce"})
    sup = method.sup_loss
    assert not sup.include_background and sup.ce_weight > 0 and sup.dice_weight > 0
    pseudo = torch.tensor([[[1, 0]]])
    p1 = 1 / (math.exp(2) + 1)  # softmax of pixel 0 for class 1
    dice = 1 - (2 * p1 + 1e-5) / (p1 + 1 + 1e-5)
    loss = method.unsup_loss(logits, pseudo, conf).item()
    assert loss == pytest.approx(sup.ce_weight * -math.log(p1) / 2 + sup.dice_weight * dice, rel=1e-5)
    # Changing the unconfident pixel's logits changes nothing: only confident pixels count.
    other = logits.clone()
    other[0, :, 0, 1] = torch.tensor([-3.0, 5.0])
    assert method.unsup_loss(other, pseudo, conf).item() == pytest.approx(loss, rel=1e-6)


@pytest.mark.parametrize("rep_head", ["stack", "pyramid"])
def test_three_dimensional_maps_use_the_same_code_path(step_3d, rep_head) -> None:
    out = step_3d(
        "actionpp",
        f"method.rep_head={rep_head}",
        "method.rep_dim=16",
        "method.anco.num_queries=32",
        "method.anco.num_negatives=32",
        "method.saacl.anchors_per_class=32",
        "method.saacl.queue_size=256",
        "method.mix=cutmix",
    )
    assert all(math.isfinite(float(v.detach()) if torch.is_tensor(v) else v) for v in out.values())


def test_bad_settings_fail_with_messages() -> None:
    with pytest.raises(ConfigError, match="applies_to"):
        build_config({"method": {"name": "actionpp", "schedule": {"applies_to": ["anko"]}}})
