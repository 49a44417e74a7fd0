"""The supervised loss of every segmenting method: weighted Dice + cross-entropy on labeled images.

    L_sup = dice_weight * Dice(softmax(logits), y) + ce_weight * CE(logits, y)

with MONAI's ``DiceCELoss``: soft Dice per class over the whole batch (foreground classes unless
``include_background``), averaged over classes; CE averaged over pixels. Its three keys
(``method.dice_weight``, ``method.ce_weight``, ``method.include_background``) are declared once, in
:class:`SupervisedLossParams`, which the ``Params`` of every method with a supervised term subclass; a method
whose paper uses other weights changes only the default (:meth:`SupervisedLossParams.field_with_default`).

:meth:`SupervisedLoss.masked` is the same two terms against pseudo-labels, counted only where a mask (the
confident pixels) is set: FixMatch's masked CE, divided by every pixel [0], plus UniMatch's masked Dice [1].

- [0] K. Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
  NeurIPS 2020, https://arxiv.org/abs/2001.07685
- [1] L. Yang, L. Qi, L. Feng, W. Zhang, Y. Shi, "Revisiting Weak-to-Strong Consistency in Semi-Supervised
  Semantic Segmentation" (UniMatch), CVPR 2023, https://arxiv.org/abs/2208.09910
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from monai.losses import DiceCELoss, MaskedDiceLoss
from monai.networks.utils import one_hot
from pydantic import Field
from pydantic.fields import FieldInfo
from torch import Tensor, nn

from medcl.config import MethodParams

__all__ = ["SupervisedLoss", "SupervisedLossParams"]


class SupervisedLossParams(MethodParams):
    """``method.*`` keys of the supervised loss, shared by every method that trains on labels."""

    # 0.5 and 0.5: ACTION's and UniMatch's weights; the supervised baseline overrides both defaults with 1.
    dice_weight: float = Field(
        0.5, ge=0, description="Weight of the soft Dice term of the supervised loss (Dice + CE); 0 drops it."
    )
    ce_weight: float = Field(
        0.5,
        ge=0,
        description="Weight of the cross-entropy term of the supervised loss (Dice + CE); 0 drops it.",
    )
    include_background: bool = Field(False, description="Count background in the Dice term.")

    @classmethod
    def field_with_default(cls, name: str, default: Any) -> Any:
        """The declaration of key ``name`` with another default; bounds and description unchanged.

        Example:
            >>> class BaselineParams(SupervisedLossParams):
            ...     dice_weight: float = SupervisedLossParams.field_with_default("dice_weight", 1.0)
        """
        return FieldInfo.merge_field_infos(SupervisedLossParams.model_fields[name], default=default)


class SupervisedLoss(nn.Module):
    """``dice_weight * Dice + ce_weight * CE`` of logits against integer labels (see the module docstring).

    Args:
        dice_weight: Weight of the soft Dice term (>= 0; 0 drops it).
        ce_weight: Weight of the cross-entropy term (>= 0; 0 drops it).
        include_background: Count class 0 in the Dice term. Leave it off when the background dominates
            the image: its near-perfect Dice would dilute the foreground classes' signal.

    Raises:
        ValueError: A negative weight.

    Example:
        >>> loss_fn = SupervisedLoss(dice_weight=0.5, ce_weight=0.5)
        >>> loss = loss_fn(logits, labels)  # logits: (B, K, H, W), labels: (B, 1, H, W) int64
    """

    def __init__(
        self, dice_weight: float = 1.0, ce_weight: float = 1.0, include_background: bool = False
    ) -> None:
        """Build MONAI's Dice + CE and masked Dice losses."""
        super().__init__()
        for name, value in (("dice_weight", dice_weight), ("ce_weight", ce_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0 drops the term); got {value}.")
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.include_background = include_background
        self.dice_ce = DiceCELoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            lambda_dice=dice_weight,
            lambda_ce=ce_weight,
        )
        # One-hot targets given, not indices: MONAI masks the target before one-hot encoding it, so a masked-out
        # pixel would become a background target (a missed background pixel when the background counts).
        self.masked_dice = MaskedDiceLoss(include_background=include_background, softmax=True)

    @classmethod
    def from_params(cls, params: SupervisedLossParams) -> SupervisedLoss:
        """The loss of a method's ``method.dice_weight``, ``method.ce_weight`` and ``method.include_background``."""
        return cls(params.dice_weight, params.ce_weight, params.include_background)

    def extra_repr(self) -> str:
        return (
            f"dice_weight={self.dice_weight}, ce_weight={self.ce_weight}, "
            f"include_background={self.include_background}"
        )

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The supervised loss of one batch.

        Args:
            logits: Shape: ``(B, K, *S)``.
            labels: Class indices. Shape: ``(B, 1, *S)``, int64.

        Returns:
            A scalar tensor.
        """
        return self.dice_ce(logits, labels)

    def masked(self, logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """The loss restricted to the pixels of ``mask``: masked CE over every pixel + masked Dice.

            ce_weight * sum(mask * CE) / |pixels|  +  dice_weight * MaskedDice(softmax(logits), labels, mask)

        Dividing the CE by every pixel, not by the masked ones, is FixMatch's: when few pixels are confident
        the term is small by itself, so it needs no ramp-up. A term whose weight is 0 is not computed.

        Args:
            logits: Shape: ``(B, K, *S)``.
            labels: Class indices (pseudo-labels). Shape: ``(B, *S)``, int64.
            mask: Pixels that count (bool or 0/1). Shape: ``(B, *S)``.

        Returns:
            A float32 scalar tensor (0 when nothing is masked in).
        """
        mask = mask.float()  # (B, *S)
        logits = logits.float()  # once: both terms in float32
        loss = logits.new_zeros(())
        if self.ce_weight:
            ce = F.cross_entropy(logits, labels, reduction="none")  # (B, *S)
            loss = loss + self.ce_weight * (ce * mask).sum() / mask.numel()
        if self.dice_weight:
            target = one_hot(labels.unsqueeze(1), logits.shape[1])  # (B, K, *S)
            dice = self.masked_dice(logits, target, mask=mask.unsqueeze(1))
            loss = loss + self.dice_weight * dice
        return loss
