"""Supervised baseline: Dice + cross-entropy on the labeled stream only."""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceCELoss
from pydantic import Field

from medcl.config import Config
from medcl.methods.base import DataSpec, Method, MethodParams


class SupervisedParams(MethodParams):
    """``method.*`` keys of the supervised method."""

    dice_weight: float = Field(1.0, ge=0, description="Weight of the soft Dice loss (foreground classes).")
    ce_weight: float = Field(1.0, ge=0, description="Weight of the cross-entropy loss.")
    include_background: bool = Field(False, description="Count background in the Dice term.")


class Supervised(Method):
    """Dice + CE on labeled samples: the baseline every semi-supervised method is compared with.

    ``loss = dice_weight * Dice(softmax(f(x)), y) + ce_weight * CE(f(x), y)`` with MONAI's ``DiceCELoss``
    (soft Dice over the batch per class, averaged over classes).
    """

    name = "supervised"
    Params = SupervisedParams

    def __init__(self, cfg: Config, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        self.net = self.build_net()
        self.loss_fn = DiceCELoss(
            include_background=self.params.include_background,
            to_onehot_y=True,
            softmax=True,
            lambda_dice=self.params.dice_weight,
            lambda_ce=self.params.ce_weight,
        )

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor | float]:
        labeled = batch["labeled"]
        logits = self.net(labeled["image"])  # (B, K, *patch)
        loss = self.loss_fn(logits, labeled["label"])
        return {"loss": loss, "sup": loss.detach()}

    def inference_network(self):
        return self.net
