"""Supervised baseline: Dice + cross-entropy on the labeled stream only."""

from __future__ import annotations

from typing import Any

import torch

from medcl.config import MethodParams
from medcl.methods.base import DataSpec, Method, RunFacts
from medcl.methods.supervised_loss import SupervisedLoss, SupervisedLossParams
from medcl.models.segnet import SegNet


class SupervisedParams(SupervisedLossParams):
    """``method.*`` keys of the supervised method: the supervised loss's, each weight 1 by default."""

    # The baseline weighs both terms 1 (DiceCELoss's own defaults), not 0.5 as ACTION and UniMatch do.
    dice_weight: float = SupervisedLossParams.field_with_default("dice_weight", 1.0)
    ce_weight: float = SupervisedLossParams.field_with_default("ce_weight", 1.0)


class Supervised(Method):
    """Dice + CE on labeled samples: the baseline every semi-supervised method is compared with.

    ``loss = dice_weight * Dice(softmax(f(x)), y) + ce_weight * CE(f(x), y)``
    (:class:`~medcl.methods.supervised_loss.SupervisedLoss`: soft Dice over the batch per class, averaged
    over classes).
    """

    name = "supervised"
    Params = SupervisedParams

    def __init__(self, params: MethodParams, run: RunFacts, spec: DataSpec) -> None:
        super().__init__(params, run, spec)
        self.net = self.build_net()
        self.loss_fn = SupervisedLoss.from_params(self.params)

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor | float]:
        labeled = batch["labeled"]
        logits = self.net(labeled["image"])  # (B, K, *patch)
        loss = self.loss_fn(logits, labeled["label"])
        return {"loss": loss, "sup": loss.detach()}

    def inference_network(self) -> SegNet:
        return self.net
