"""Weak-to-strong consistency with one network (FixMatch [0] for segmentation, UniMatch's medical loss [1]).

The cheapest semi-supervised step: one network, no teacher copy, no contrast. Each step

1. predicts the unlabeled slices' *weak* view (the sampler's own flips/rotations) without gradient and keeps
   the argmax as pseudo-label and the max probability as confidence;
2. builds a *strong* view of the same slices (CutMix between the unlabeled slices, with pseudo-labels and
   confidences mixed by the same boxes, then colour jitter and Gaussian blur). Steps 1-2 are the shared
   weak -> strong step, :func:`medcl.methods.teacher.weak_to_strong`;
3. trains on ``L_sup + unsup_weight * L_unsup``: ``L_sup`` is Dice + CE on the labeled slices
   (:class:`~medcl.methods.supervised_loss.SupervisedLoss`), and ``L_unsup`` is the same loss on the strong
   view against the pseudo-labels, counted only where the confidence reaches ``threshold`` (``0.95`` in both
   papers; :meth:`~medcl.methods.supervised_loss.SupervisedLoss.masked`):

       L_unsup = ce_weight * sum(m * CE) / |pixels|  +  dice_weight * MaskedDice(softmax, pseudo, m)

   with ``m = [confidence >= threshold]``. Dividing the CE by every pixel, not by the confident ones, is
   FixMatch's: early in training, when few pixels are confident, the unsupervised term is small by itself, so no
   ramp-up schedule is needed. The masked Dice term is UniMatch's ACDC loss.

The labeled slices and the strong view go through the network in one forward; the weak view's forward runs
under ``torch.no_grad`` in training mode (as FixMatch: the same network, the same normalisation).

With ``fp_dropout > 0`` the step adds UniMatch's feature-perturbation stream: the weak view goes through the
network once more, in the same forward as the labeled slices and the strong view, with whole channels of
the encoder features the decoder reads dropped (:class:`~medcl.models.segnet.FeatureDropout`, UniMatch: 0.5),
and is trained on the weak view's own (unmixed) pseudo-labels with the same masked loss. The unlabeled term
becomes ``(1 - fp_weight) * L_strong + fp_weight * L_fp`` (UniMatch weighs its image and feature streams
equally: ``fp_weight`` 0.5). The trained forward carries 24 instead of 16 slices at the CPU recipe's batch:
x1.24 FixMatch's step on ACDC, x1.51 on Hippocampus (docs/results.md).

- [0] K. Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
  NeurIPS 2020, https://arxiv.org/abs/2001.07685
- [1] L. Yang, L. Qi, L. Feng, W. Zhang, Y. Shi, "Revisiting Weak-to-Strong Consistency in Semi-Supervised
  Semantic Segmentation" (UniMatch), CVPR 2023, https://arxiv.org/abs/2208.09910
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from medcl.config import MethodParams
from medcl.data.mixing import MixMode, step_generator
from medcl.methods.base import DataSpec, Method, RunFacts
from medcl.methods.supervised_loss import SupervisedLoss, SupervisedLossParams
from medcl.methods.teacher import confident, weak_to_strong
from medcl.models.segnet import FeatureDropout, SegNet


class FixMatchParams(SupervisedLossParams):
    """``method.*`` keys of ``fixmatch``.

    The supervised loss's keys (``dice_weight``, ``ce_weight``, ``include_background``) set both ``L_sup`` and
    the masked ``L_unsup``.
    """

    unsup_weight: float = Field(1.0, ge=0, description="Weight of L_unsup (FixMatch: 1, no ramp-up).")
    threshold: float = Field(
        0.95,
        ge=0,
        le=1,
        description="Confidence of a pseudo-labeled pixel that counts (FixMatch, UniMatch: 0.95).",
    )
    mix: MixMode = Field("cutmix", description="Strong view mixing: cutmix (UniMatch), classmix, none.")
    jitter_prob: float = Field(0.8, ge=0, le=1, description="Strong view: colour jitter probability (0.8).")
    blur_prob: float = Field(0.5, ge=0, le=1, description="Strong view: Gaussian blur probability (0.5).")
    fp_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="UniMatch's feature-perturbation stream: channel dropout of the encoder features the "
        "decoder reads, on the weak view (UniMatch: 0.5); 0 turns the stream off (plain FixMatch).",
    )
    fp_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of the feature-perturbation stream in the unlabeled term, the strong view getting "
        "the rest (UniMatch: 0.5); used only with fp_dropout > 0.",
    )


class FixMatch(Method):
    """One network trained on labeled slices and on its own confident pseudo-labels of strong views."""

    name = "fixmatch"
    Params = FixMatchParams
    streams: ClassVar[dict[str, bool]] = {"labeled": True, "unlabeled": False}
    metrics: ClassVar[frozenset[str]] = frozenset({"confident_fraction", "pseudo_dice"})

    def __init__(self, params: MethodParams, run: RunFacts, spec: DataSpec) -> None:
        super().__init__(params, run, spec)
        self.net = self.build_net()
        self.sup_loss = SupervisedLoss.from_params(self.params)

    def unsup_loss(self, logits: Tensor, pseudo: Tensor, confidence: Tensor) -> Tensor:
        """Confidence-masked CE (over every pixel) + masked Dice of the strong view against the pseudo-labels.

        Args:
            logits: Logits on the strong view. Shape: ``(B, K, *S)``.
            pseudo: Mixed pseudo-labels. Shape: ``(B, *S)``, int64.
            confidence: Mixed confidences. Shape: ``(B, *S)``.
        """
        return self.sup_loss.masked(logits, pseudo, confident(confidence, self.params.threshold))

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, Tensor | float]:
        p = self.params
        labeled = batch["labeled"]
        x_l, y_l = labeled["image"], labeled["label"]  # (Bl, C, *S), (Bl, 1, *S)
        if "unlabeled" not in batch:  # data.unlabeled_batch_size: 0 -> the supervised baseline
            l_sup = self.sup_loss(self.net(x_l), y_l)
            return {"loss": l_sup, "sup": l_sup.detach()}
        x_u = batch["unlabeled"]["image"]  # (Bu, C, *S)
        with torch.no_grad():
            weak_logits = self.net(x_u)  # (Bu, K, *S): the same network, in training mode
        # One random source per step (mix boxes, jitter, then dropout masks): a resumed run draws them again.
        generator = step_generator(self.run.seed, step, x_u.device)
        strong = weak_to_strong(
            weak_logits,
            x_u,
            mix=p.mix,
            num_classes=self.spec.num_classes,
            jitter_prob=p.jitter_prob,
            blur_prob=p.blur_prob,
            generator=generator,
            withheld=batch["unlabeled"].get("label"),  # train.pseudo_dice only; never a loss
        )
        n_lab, n_u = x_l.shape[0], x_u.shape[0]
        views, perturb = [x_l, strong.image], None
        if p.fp_dropout > 0:  # then the weak view again, its encoder features dropped
            views.append(x_u)
            perturb = FeatureDropout(p.fp_dropout, start=n_lab + n_u, generator=generator)
        logits = self.net(torch.cat(views), perturb=perturb)  # (Bl + Bu [+ Bu], K, *S)
        l_sup = self.sup_loss(logits[:n_lab], y_l)
        l_unsup = self.unsup_loss(logits[n_lab : n_lab + n_u], strong.labels, strong.confidence)
        result: dict[str, Tensor | float] = {"sup": l_sup.detach()}
        if perturb is not None:
            l_fp = self.unsup_loss(logits[n_lab + n_u :], strong.weak_labels, strong.weak_confidence)
            result |= {"unsup_strong": l_unsup.detach(), "unsup_fp": l_fp.detach()}
            l_unsup = (1 - p.fp_weight) * l_unsup + p.fp_weight * l_fp
        result |= {
            "loss": l_sup + p.unsup_weight * l_unsup,
            "unsup": l_unsup.detach(),
            "confident_fraction": strong.confident(p.threshold).float().mean(),
        }
        if strong.quality is not None:
            result["pseudo_dice"] = strong.quality
        return result

    def inference_network(self) -> SegNet:
        return self.net
