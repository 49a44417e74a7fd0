"""ACTION (IPMI 2023) and ACTION++ (MICCAI 2023) stage 3 (``actionpp``, ``medcl train``): anatomical contrast.

A student network and its EMA teacher (``m = 0.99``, one update per step, after the optimiser step; the
teacher never receives gradients; :class:`~medcl.methods.teacher.StudentTeacher`) [0, 1], usually initialised
with ``--init`` from stages 1-2 (``pretrain_actionpp``, :mod:`medcl.methods.actionpp_pretrain`). The teacher
labels the weak view of the unlabeled slices; the student sees a strong view (CutMix/ClassMix of the weak view
with the pseudo-labels mixed alike, colour jitter, blur: :func:`medcl.methods.teacher.weak_to_strong`) and
learns

    L = L_sup + w_unsup L_unsup + w_anco L_anco + w_saacl L_saacl

with ``L_sup = 0.5 (Dice + CE)`` on labeled slices (:class:`~medcl.methods.supervised_loss.SupervisedLoss`),
``L_unsup`` the pseudo-label cross-entropy weighted per image by the fraction of pixels with teacher confidence
>= 0.97 (the authors' ReCo-style weighting, or a plain confidence mask, or FixMatch's masked CE + Dice:
``method.unsup_weighting``), ``L_anco`` the anatomical contrast
(:mod:`medcl.losses.anatomical`) on a representation head over all decoder maps, and ``L_saacl`` the supervised
adaptive anatomical contrast against uniform class centers (:mod:`medcl.losses.saacl`,
:mod:`medcl.models.centers`). Temperatures follow ``method.schedule`` (ATS, :mod:`medcl.schedules`).
``saacl.weight: 0`` with a constant schedule is **ACTION**; ``anco.weight: 0`` and ``saacl.weight: 0`` is a
plain **mean teacher** (pseudo-labels on strong views); a weight of 0 skips its term entirely.

Inference network: the **student** by default (``method.inference``). The authors' fine-tuning scripts save
``isd.model`` - the student - every 1000 iterations and their test script evaluates that checkpoint, so the
published numbers are the student's; ``inference: teacher`` validates and exports the EMA teacher instead.

- [0] C. You, W. Dai, Y. Min, L. Staib, J. S. Duncan, "Bootstrapping Semi-supervised Medical Image
  Segmentation with Anatomical-aware Contrastive Distillation", IPMI 2023, https://arxiv.org/abs/2206.02307
- [1] C. You, W. Dai, Y. Min, L. Staib, J. Sekhon, J. S. Duncan, "ACTION++: Improving Semi-supervised Medical
  Image Segmentation with Adaptive Anatomical Contrast", MICCAI 2023, https://arxiv.org/abs/2304.02689
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from medcl.config import MethodParams
from medcl.data.mixing import MixMode, step_generator
from medcl.errors import ConfigError
from medcl.losses.anatomical import anatomical_contrast_loss, flatten_valid, sample_pixels
from medcl.losses.saacl import AdaptiveCenters, saacl_loss
from medcl.methods.base import DataSpec, RunFacts, check_schedule_targets
from medcl.methods.supervised_loss import SupervisedLoss, SupervisedLossParams
from medcl.methods.teacher import (
    FeatureQueue,
    StrongView,
    StudentTeacher,
    TeacherParams,
    confident,
    frozen_copy,
    weak_to_strong,
)
from medcl.models.action_heads import PyramidRepresentationHead, RepresentationHead
from medcl.models.centers import uniform_centers
from medcl.models.segnet import NetOutput, SegNet
from medcl.schedules import ScheduleParams, scheduled_temperature

__all__ = ["FINETUNE_TEMPERATURES", "ActionPP", "ActionPPParams", "AnCoParams", "SAACLParams"]

#: The losses whose temperature ``method.schedule`` may schedule.
FINETUNE_TEMPERATURES = ("anco", "saacl")


class AnCoParams(BaseModel):
    """``method.anco``: anatomical contrast (ACTION)."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(0.01, ge=0, description="w_anco in the total loss (code: 0.01); 0 skips AnCo.")
    temperature: float = Field(
        0.5, gt=0, description="tau (ACTION: 0.5); the ATS lower bound if tau_min null."
    )
    num_queries: int = Field(256, ge=1, description="Hard queries per class (256).")
    num_negatives: int = Field(512, ge=1, description="Negative keys per query (512).")
    weak_threshold: float = Field(
        0.7, ge=0, le=1, description="Unlabeled pixels take part from this confidence."
    )
    strong_threshold: float = Field(
        0.97, ge=0, le=1, description="Queries are pixels with own-class prob below."
    )


class SAACLParams(BaseModel):
    """``method.saacl``: supervised adaptive anatomical contrast (ACTION++)."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(0.01, ge=0, description="w_saacl in the total loss (code: 0.01); 0 skips SAACL.")
    temperature: float = Field(
        0.07, gt=0, description="tau_sa (code: 0.07); the ATS lower bound if tau_min null."
    )
    lambda_a: float = Field(
        0.2, ge=0, description="Weight of the assigned-center term (paper 0.2; 2D code 0.1)."
    )
    anchors_per_class: int = Field(256, ge=1, description="Labeled anchors drawn per present class (256).")
    denominator: Literal["batch", "queue"] = Field(
        "queue",
        description="Keys in the softmax: this step's teacher keys (paper) or a queue of them (code).",
    )
    queue_size: int = Field(12288, ge=1, description="Teacher keys in the queue (denominator: queue).")
    class_momentum: float = Field(0.9, ge=0, lt=1, description="EMA momentum of the class means phi_c (0.9).")
    centers: Literal["auto", "simplex", "optimize"] = Field(
        "auto", description="auto: closed-form simplex when rep_dim >= K - 1, else the uniformity optimiser."
    )
    center_steps: int = Field(10000, ge=1, description="Optimiser iterations (centers: optimize).")


class ActionPPParams(TeacherParams, SupervisedLossParams):
    """``method.*`` keys of ``actionpp`` (ACTION/ACTION++ stage 3).

    ``ema_momentum`` (:class:`~medcl.methods.teacher.TeacherParams`) and ``L_sup``'s ``dice_weight``,
    ``ce_weight``, ``include_background`` (:class:`~medcl.methods.supervised_loss.SupervisedLossParams`, 0.5 each
    as in [0]) are inherited.
    """

    inference: Literal["student", "teacher"] = Field(
        "student", description="Network validated and exported (the authors test the student)."
    )
    unsup_weight: float = Field(1.0, ge=0, description="Weight of the pseudo-label loss L_unsup.")
    pseudo_threshold: float = Field(
        0.97, ge=0, le=1, description="Teacher confidence of a 'confident' pixel."
    )
    unsup_weighting: Literal["fraction", "mask", "dice_ce"] = Field(
        "fraction",
        description="fraction: CE on all pixels x fraction of confident pixels per image (code); mask: CE on "
        "confident pixels only; dice_ce: FixMatch/UniMatch's ce_weight x CE on confident pixels (over all "
        "pixels) + dice_weight x Dice on confident pixels.",
    )
    mix: MixMode = Field("classmix", description="Strong view mixing: classmix (code default), cutmix, none.")
    jitter_prob: float = Field(0.5, ge=0, le=1, description="Strong view: colour jitter probability.")
    blur_prob: float = Field(0.5, ge=0, le=1, description="Strong view: Gaussian blur probability.")
    rep_dim: int = Field(128, ge=2, description="D of the representation head (paper: 128; 2D code: 496).")
    rep_scale: int = Field(
        1, ge=1, description="Representation at 1/rep_scale of the output size (1 = full, as the reference)."
    )
    rep_head: Literal["stack", "pyramid"] = Field(
        "stack",
        description="stack: conv 3x3 on every decoder map upsampled and concatenated (reference); pyramid: the "
        "3x3 per map at its own resolution, results resized and summed (16x cheaper on 128x128 ACDC).",
    )
    anco: AnCoParams = Field(default_factory=AnCoParams, description="Anatomical contrast.")
    saacl: SAACLParams = Field(default_factory=SAACLParams, description="Adaptive anatomical contrast.")
    schedule: ScheduleParams = Field(
        default_factory=ScheduleParams, description="Temperature schedule; applies_to: anco, saacl."
    )

    @model_validator(mode="after")
    def _check(self) -> ActionPPParams:
        check_schedule_targets(self.schedule, FINETUNE_TEMPERATURES)
        return self


class ActionPP(StudentTeacher):
    """ACTION/ACTION++ stage 3: pseudo-labels on strong views + AnCo + SAACL (see the module docstring)."""

    name = "actionpp"
    metrics: ClassVar[frozenset[str]] = frozenset({"confident_fraction", "pseudo_dice"})
    Params = ActionPPParams
    streams: ClassVar[dict[str, bool]] = {"labeled": True, "unlabeled": False}
    params: ActionPPParams

    def __init__(self, params: MethodParams, run: RunFacts, spec: DataSpec) -> None:
        super().__init__(params, run, spec)
        p = self.params
        if p.rep_scale > 1 and any(s % p.rep_scale for s in spec.patch_size):
            raise ConfigError(
                f"method.rep_scale ({p.rep_scale}) must divide every data.patch_size value {list(spec.patch_size)}"
            )
        self.total_steps = run.steps
        self.use_anco = p.anco.weight > 0
        self.use_saacl = p.saacl.weight > 0
        self.net = self.build_net()
        self.teacher = frozen_copy(self.net)
        self.rep_head: nn.Module | None = None
        self.teacher_rep_head: nn.Module | None = None
        self.centers: AdaptiveCenters | None = None
        self.saacl_queue: FeatureQueue | None = None
        if self.use_anco or self.use_saacl:
            channels = self.net.feature_channels()  # bottleneck + every decoder map
            if p.rep_head == "pyramid":
                self.rep_head = PyramidRepresentationHead(channels, p.rep_dim, spec.spatial_dims)
            else:
                self.rep_head = RepresentationHead(sum(channels.values()), p.rep_dim, spec.spatial_dims)
        if self.use_saacl:
            assert self.rep_head is not None
            self.teacher_rep_head = frozen_copy(self.rep_head)
            centers = uniform_centers(
                spec.num_classes,
                p.rep_dim,
                p.saacl.centers,
                steps=p.saacl.center_steps,
                seed=run.seed,
                cache_dir=run.cache_dir / "centers",
            )
            self.centers = AdaptiveCenters(centers, p.saacl.class_momentum)
            if p.saacl.denominator == "queue":
                self.saacl_queue = FeatureQueue(p.saacl.queue_size, (p.rep_dim,), labels=True, init="empty")
        self.sup_loss = SupervisedLoss.from_params(p)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs: list[tuple[nn.Module, nn.Module]] = [(self.teacher, self.net)]
        if self.teacher_rep_head is not None and self.rep_head is not None:
            pairs.append((self.teacher_rep_head, self.rep_head))
        return pairs

    def temperatures(self, step: int) -> dict[str, float]:
        """The step's AnCo and SAACL temperatures (ATS or constant)."""
        p = self.params
        return {
            "anco": scheduled_temperature(p.schedule, "anco", p.anco.temperature, step, self.total_steps),
            "saacl": scheduled_temperature(p.schedule, "saacl", p.saacl.temperature, step, self.total_steps),
        }

    def _representation(self, head: nn.Module, out: NetOutput) -> Tensor:
        """``head`` on the stacked decoder maps at 1/rep_scale of the output size: ``(B, D, *S / s)``."""
        size = [s // self.params.rep_scale for s in out.logits.shape[2:]]
        return head(out, size)

    def _subsample(self, t: Tensor) -> Tensor:
        """Label/confidence maps ``(B, *S)`` or ``(B, K, *S)`` at the representation's resolution."""
        s = self.params.rep_scale
        if s == 1:
            return t
        n = self.spec.spatial_dims
        index = (slice(None),) * (t.ndim - n) + (slice(None, None, s),) * n
        return t[index]

    def unsup_loss(self, logits: Tensor, pseudo: Tensor, confidence: Tensor) -> Tensor:
        """Pseudo-label loss on the strong view.

        ``fraction`` (the authors'): per-pixel CE, times the fraction of the image's pixels with confidence
        >= ``pseudo_threshold``, averaged over pixels with non-zero loss. ``mask``: CE averaged over the
        confident pixels only. ``dice_ce``: the supervised loss restricted to the confident pixels, as
        FixMatch's (:meth:`~medcl.methods.supervised_loss.SupervisedLoss.masked`: CE summed over them and
        divided by every pixel, plus the masked Dice), so the small foreground structures weigh as much as the
        background that most confident pixels are.

        Args:
            logits: Student logits on the strong view. Shape: ``(B, K, *S)``.
            pseudo: Mixed pseudo-labels. Shape: ``(B, *S)``.
            confidence: Mixed teacher confidences. Shape: ``(B, *S)``.
        """
        mask = confident(confidence, self.params.pseudo_threshold)  # (B, *S)
        if self.params.unsup_weighting == "dice_ce":
            return self.sup_loss.masked(logits, pseudo, mask)
        ce = F.cross_entropy(logits.float(), pseudo, reduction="none")  # (B, *S)
        if self.params.unsup_weighting == "mask":
            return (ce * mask).sum() / mask.sum().clamp(min=1)
        frac = mask.flatten(1).float().mean(dim=1)  # (B,)
        weighted = ce * frac.view(-1, *([1] * (ce.ndim - 1)))
        nonzero = ce > 0
        return (weighted * nonzero).sum() / nonzero.sum().clamp(min=1)

    def _saacl(
        self, rep_l: Tensor, labels: Tensor, keys_l: Tensor, tau: float, gen: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """SAACL on labeled pixels; returns the loss and the (teacher keys, labels) to enqueue."""
        p = self.params.saacl
        assert self.centers is not None
        d = rep_l.shape[1]
        anchors_all = rep_l.movedim(1, -1).reshape(-1, d)  # (P, D)
        keys_all = keys_l.movedim(1, -1).reshape(-1, d)  # (P, D)
        flat = labels.reshape(-1)  # (P,)
        k = self.spec.num_classes
        present = (torch.bincount(flat, minlength=k) > 0).nonzero().squeeze(1)  # (V,)
        n = p.anchors_per_class
        if present.numel() > 1:
            classes = present.unsqueeze(1).expand(-1, n)  # (V, n)
            index, _ = sample_pixels(flat, torch.ones_like(flat, dtype=torch.bool), classes, k, gen)
            index = index.reshape(-1)  # (V * n,)
        else:  # one class in the batch: random pixels, as the reference
            index = torch.randint(flat.numel(), (n,), generator=gen, device=flat.device)
        anchors, y, own = anchors_all[index], flat[index], keys_all[index]  # (N, D), (N,), (N, D)
        self.centers.update(anchors.detach(), y)  # EMA class means + Hungarian assignment
        if p.denominator == "batch":
            keys, key_labels, own_keys = own, y, None
        else:
            assert self.saacl_queue is not None
            keys, key_labels, own_keys = self.saacl_queue.keys, self.saacl_queue.labels, own
        loss = saacl_loss(
            anchors,
            y,
            keys,
            key_labels,
            self.centers.centers,
            self.centers.assignment,
            tau=tau,
            lambda_a=p.lambda_a,
            own_keys=own_keys,
        )
        return loss, own.detach(), y

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, Tensor | float]:
        p = self.params
        k = self.spec.num_classes
        labeled = batch["labeled"]
        x_l, y_l = labeled["image"], labeled["label"][:, 0]  # (Bl, C, *S), (Bl, *S)
        n_lab = x_l.shape[0]
        x_u = batch["unlabeled"]["image"] if "unlabeled" in batch else None  # (Bu, C, *S)
        gen = step_generator(self.run.seed, step, x_l.device)
        taus = self.temperatures(step)
        need_rep = self.rep_head is not None

        # Teacher: pseudo-labels on the weak unlabeled view; SAACL keys on the labeled slices.
        keys_l = None
        strong: StrongView | None = None
        with torch.no_grad():
            t_inputs = ([x_u] if x_u is not None else []) + ([x_l] if self.use_saacl else [])
            if t_inputs:
                t_out = self.teacher(torch.cat(t_inputs), return_features=self.use_saacl)
                t_logits = t_out.logits if isinstance(t_out, NetOutput) else t_out
                if x_u is not None:
                    strong = weak_to_strong(
                        t_logits[: x_u.shape[0]],  # (Bu, K, *S)
                        x_u,
                        mix=p.mix,
                        num_classes=k,
                        jitter_prob=p.jitter_prob,
                        blur_prob=p.blur_prob,
                        generator=gen,
                        withheld=batch["unlabeled"].get("label"),  # train.pseudo_dice only; never a loss
                    )
                if self.use_saacl:
                    assert isinstance(t_out, NetOutput) and self.teacher_rep_head is not None
                    start = 0 if x_u is None else x_u.shape[0]
                    t_lab = NetOutput(
                        logits=t_out.logits[start:],
                        features={key: f[start:] for key, f in t_out.features.items()},
                        embedding=t_out.embedding[start:],
                    )
                    keys_l = self._representation(self.teacher_rep_head, t_lab)  # (Bl, D, *S/s)

        # Student: labeled slices and the strong view in one forward.
        x = x_l if strong is None else torch.cat([x_l, strong.image])
        out = self.net(x, return_features=need_rep)
        logits = out.logits if isinstance(out, NetOutput) else out  # (B, K, *S)
        l_sup = self.sup_loss(logits[:n_lab], y_l.unsqueeze(1))
        loss = l_sup
        result: dict[str, Tensor | float] = {"sup": l_sup.detach()}
        if strong is not None:
            l_unsup = self.unsup_loss(logits[n_lab:], strong.labels, strong.confidence)
            loss = loss + p.unsup_weight * l_unsup
            result["unsup"] = l_unsup.detach()
            result["confident_fraction"] = strong.confident(p.pseudo_threshold).float().mean()

        if need_rep:
            assert isinstance(out, NetOutput) and self.rep_head is not None
            rep = self._representation(self.rep_head, out)  # (B, D, *S/s)
        if self.use_anco:
            labels = y_l if strong is None else torch.cat([y_l, strong.labels])  # (B, *S)
            valid = torch.ones_like(y_l, dtype=torch.bool)
            if strong is not None:
                valid = torch.cat([valid, strong.confident(p.anco.weak_threshold)])
            # Class probabilities only at the representation's pixels: (B, K, *S / s).
            prob = torch.softmax(self._subsample(logits.detach()).float(), dim=1)
            flat = flatten_valid(rep, self._subsample(labels), self._subsample(valid), prob)
            l_anco = anatomical_contrast_loss(
                *flat,
                k,
                tau=taus["anco"],
                num_queries=p.anco.num_queries,
                num_negatives=p.anco.num_negatives,
                strong_threshold=p.anco.strong_threshold,
                generator=gen,
            )
            loss = loss + p.anco.weight * l_anco
            result["anco"] = l_anco.detach()
        if self.use_saacl:
            assert keys_l is not None
            l_saacl, keys, key_labels = self._saacl(
                rep[:n_lab], self._subsample(y_l), keys_l, taus["saacl"], gen
            )
            loss = loss + p.saacl.weight * l_saacl
            result["saacl"] = l_saacl.detach()
            if self.saacl_queue is not None:  # enqueued after the optimiser step, with the EMA update
                self.push_after_step(self.saacl_queue, keys, key_labels)
        # train/tau: the first scheduled loss's temperature, else the first active loss's.
        used = [name for name, on in (("anco", self.use_anco), ("saacl", self.use_saacl)) if on]
        scheduled = [name for name in FINETUNE_TEMPERATURES if name in p.schedule.applies_to]
        result.update({f"tau_{name}": taus[name] for name in used})
        result.update(loss=loss, tau=taus[(scheduled or used or ["anco"])[0]])
        if strong is not None and strong.quality is not None:
            result["pseudo_dice"] = strong.quality
        return result

    def inference_network(self) -> SegNet:
        return self.teacher if self.params.inference == "teacher" else self.net
