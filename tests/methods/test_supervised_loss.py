"""The shared supervised loss (Dice + CE) and its config keys, by hand on a 2x2 image."""

from __future__ import annotations

import math

import pytest
import torch

from medcl.methods import METHODS
from medcl.methods.supervised_loss import SupervisedLoss, SupervisedLossParams
from medcl.services.configs import build_config

SMOOTH = 1e-5  # MONAI's smooth_nr = smooth_dr

# One 2x2 image, K = 2. Logits (l0, l1) per pixel give p1 = 3/4, 1/4, 1/2, 3/4 (row-major).
LN3 = math.log(3.0)
LOGITS = torch.tensor([[[[0.0, LN3], [0.0, 0.0]], [[LN3, 0.0], [0.0, LN3]]]])  # (1, 2, 2, 2)
LABELS = torch.tensor([[[[1, 0], [1, 0]]]])  # (1, 1, 2, 2)
P1 = [0.75, 0.25, 0.5, 0.75]
Y1 = [1, 0, 1, 0]


def dice_loss(p: list[float], y: list[int]) -> float:
    inter = sum(a * b for a, b in zip(p, y, strict=True))
    return 1 - (2 * inter + SMOOTH) / (sum(p) + sum(y) + SMOOTH)


# -log p(label): 3/4, 3/4 (label 0 with p0 = 3/4), 1/2, 1/4 (label 0 with p0 = 1/4).
CE = [-math.log(0.75), -math.log(0.75), -math.log(0.5), -math.log(0.25)]


def test_dice_plus_ce_on_a_2x2_image_by_hand() -> None:
    dice_fg = dice_loss(P1, Y1)  # 1 - 2.5 / 4.25 = 7/17 (up to the smoothing)
    assert dice_fg == pytest.approx(7 / 17, rel=1e-5)
    ce = sum(CE) / 4
    loss = SupervisedLoss(dice_weight=0.5, ce_weight=0.5)(LOGITS, LABELS)
    assert loss.item() == pytest.approx(0.5 * dice_fg + 0.5 * ce, rel=1e-6)
    assert SupervisedLoss(dice_weight=1, ce_weight=0)(LOGITS, LABELS).item() == pytest.approx(
        dice_fg, rel=1e-6
    )
    assert SupervisedLoss(dice_weight=0, ce_weight=1)(LOGITS, LABELS).item() == pytest.approx(ce, rel=1e-6)
    # With the background: the mean of both classes' Dice (class 0: p0 = 1 - p1, y0 = 1 - y1).
    dice_bg = dice_loss([1 - p for p in P1], [1 - y for y in Y1])  # 1 - 2 / 3.75 = 7/15
    both = SupervisedLoss(dice_weight=1, ce_weight=0, include_background=True)(LOGITS, LABELS)
    assert both.item() == pytest.approx((dice_bg + dice_fg) / 2, rel=1e-6)


def test_masked_loss_on_a_2x2_image_by_hand() -> None:
    mask = torch.tensor([[[True, False], [True, True]]])  # pixel (0, 1) does not count
    labels = LABELS[:, 0]  # (1, 2, 2)
    ce = SupervisedLoss(dice_weight=0, ce_weight=1).masked(LOGITS, labels, mask)
    assert ce.item() == pytest.approx((CE[0] + CE[2] + CE[3]) / 4, rel=1e-6)  # summed, over every pixel
    dice = SupervisedLoss(dice_weight=1, ce_weight=0).masked(LOGITS, labels, mask)
    kept = [0, 2, 3]
    assert dice.item() == pytest.approx(dice_loss([P1[i] for i in kept], [Y1[i] for i in kept]), rel=1e-5)
    nothing = SupervisedLoss(0.5, 0.5).masked(LOGITS, labels, torch.zeros_like(mask))
    assert nothing.item() == pytest.approx(0.0, abs=1e-5)
    # With the background, a masked-out pixel counts for no class either: not as a missed background pixel.
    both = SupervisedLoss(dice_weight=1, ce_weight=0, include_background=True).masked(LOGITS, labels, mask)
    dice_bg = dice_loss([1 - P1[i] for i in kept], [1 - Y1[i] for i in kept])
    assert both.item() == pytest.approx(
        (dice_bg + dice_loss([P1[i] for i in kept], [Y1[i] for i in kept])) / 2, rel=1e-5
    )


def test_negative_weights_are_rejected() -> None:
    with pytest.raises(ValueError, match="ce_weight must be >= 0"):
        SupervisedLoss(ce_weight=-1)


def test_the_keys_are_declared_once_and_users_write_them_as_before() -> None:
    with_sup = {name for name, cls in METHODS.items() if issubclass(cls.Params, SupervisedLossParams)}
    assert with_sup == {"supervised", "fixmatch", "actionpp", "pretrain_actionpp"}
    defaults = {
        name: (METHODS[name].Params().dice_weight, METHODS[name].Params().ce_weight) for name in with_sup
    }
    assert defaults == {
        "supervised": (1.0, 1.0),
        "fixmatch": (0.5, 0.5),
        "actionpp": (0.5, 0.5),
        "pretrain_actionpp": (0.5, 0.5),
    }
    for name in with_sup:
        cfg = build_config({"method": {"name": name, "ce_weight": 0.25, "include_background": True}})
        assert cfg.method.ce_weight == 0.25 and cfg.method.include_background
        loss = SupervisedLoss.from_params(cfg.method)
        assert loss.ce_weight == 0.25 and loss.include_background
    bounds = METHODS["supervised"].Params.model_fields["dice_weight"].metadata
    assert bounds == SupervisedLossParams.model_fields["dice_weight"].metadata  # the baseline keeps ge=0
