"""ACTION (IPMI 2023) and ACTION++ (MICCAI 2023): student-teacher pretraining and anatomical-contrast fine-tuning.

The pipeline has three stages around a student network and its EMA teacher (``m = 0.99``, one update per
step, after the optimiser step; the teacher never receives gradients) [0, 1]:

* ``pretrain_actionpp`` (:class:`PretrainActionPP`, ``medcl pretrain``), **stages 1-2** in one run:

  - stage 1 (the first ``stage1_steps`` steps): **global relational KL distillation** - the student's
    bottleneck embedding (pooled to a 4x4 grid -> two linear layers -> predictor) learns the teacher's similarity
    distribution over a FIFO queue of past teacher embeddings (:func:`medcl.losses.relational.relational_kl`);
    only the encoder (and the global heads) train, the decoder is frozen;
  - stage 2 (the remaining steps): encoder + decoder, global KL + **local relational KL** on pooled windows
    of the segmentation logits + the supervised loss ``0.5 (Dice + CE)`` on the labeled slices.

  The teacher sees its own copy of the batch with colour jitter and blur (the authors jitter the shared
  tensor in place, so their student sees it too: bug (i) of the methods notes, not reproduced).

* ``actionpp`` (:class:`ActionPP`, ``medcl train``), **stage 3**: the teacher labels the weak view of the
  unlabeled slices; the student sees a strong view (CutMix/ClassMix of the weak view with the pseudo-labels
  mixed alike, colour jitter, blur) and learns

      L = L_sup + w_unsup L_unsup + w_anco L_anco + w_saacl L_saacl

  with ``L_sup = 0.5 (Dice + CE)`` on labeled slices, ``L_unsup`` the pseudo-label cross-entropy weighted per
  image by the fraction of pixels with teacher confidence >= 0.97 (the authors' ReCo-style weighting, or a
  plain confidence mask), ``L_anco`` the anatomical contrast (:mod:`medcl.losses.anatomical`) on a
  representation head over all decoder maps, and ``L_saacl`` the supervised adaptive anatomical contrast
  against uniform class centers (:mod:`medcl.losses.saacl`, :mod:`medcl.models.centers`). Temperatures follow
  ``method.schedule`` (ATS, :mod:`medcl.schedules`). ``saacl.weight: 0`` with a constant schedule is
  **ACTION**; ``anco.weight: 0`` and ``saacl.weight: 0`` is a plain **mean teacher** (pseudo-labels on strong
  views); a weight of 0 skips its term entirely.

Inference network: the **student** by default (``method.inference``). The authors' fine-tuning scripts save
``isd.model`` - the student - every 1000 iterations and their test script evaluates that checkpoint, so the
published numbers are the student's; ``inference: teacher`` validates and exports the EMA teacher instead.

Label protocol: stage 2 trains on labeled slices, so a label-count comparison must give pretraining the same
``--splits`` and ``--labeled N`` as stage 3. Without ``--splits`` both stages use the same seeded 80/20 split of
the labeled cases (the method validates, so the 20% are validation cases and never train).

- [0] C. You, W. Dai, Y. Min, L. Staib, J. S. Duncan, "Bootstrapping Semi-supervised Medical Image
  Segmentation with Anatomical-aware Contrastive Distillation", IPMI 2023, https://arxiv.org/abs/2206.02307
- [1] C. You, W. Dai, Y. Min, L. Staib, J. Sekhon, J. S. Duncan, "ACTION++: Improving Semi-supervised Medical
  Image Segmentation with Adaptive Anatomical Contrast", MICCAI 2023, https://arxiv.org/abs/2304.02689
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor, nn

from medcl.config import Config
from medcl.data.mixing import MixMode, colour_jitter, gaussian_blur, step_generator, strong_view
from medcl.errors import ConfigError
from medcl.losses.anatomical import anatomical_contrast_loss, flatten_valid, sample_pixels
from medcl.losses.relational import relational_kl
from medcl.losses.saacl import AdaptiveCenters, saacl_loss
from medcl.methods.base import DataSpec, Method, MethodParams, pseudo_label_dice
from medcl.methods.pretrain import ENCODER_MODULES
from medcl.methods.teacher import FeatureQueue, ema_update, frozen_copy
from medcl.models.action_heads import (
    LatentPredictor,
    LatentProjection,
    RepresentationHead,
    WindowPredictor,
    WindowProjection,
    count_windows,
    window_embeddings,
)
from medcl.models.centers import uniform_centers
from medcl.models.networks import NetOutput, SegNet
from medcl.schedules import ScheduleParams, StepCount, scheduled_temperature

__all__ = ["ActionPP", "ActionPPParams", "PretrainActionPP", "PretrainActionPPParams"]

PRETRAIN_TEMPERATURES = ("kl_student", "kl_teacher")
FINETUNE_TEMPERATURES = ("anco", "saacl")


def _check_applies_to(schedule: ScheduleParams, allowed: tuple[str, ...]) -> None:
    """Reject schedule targets the method does not have (a typo would silently keep tau constant)."""
    unknown = [name for name in schedule.applies_to if name not in allowed]
    if unknown:
        raise ValueError(f"schedule.applies_to names {unknown}; this method's losses are {list(allowed)}")


def _sup_loss(params: Any) -> DiceCELoss:
    """``dice_weight * Dice + ce_weight * CE`` (ACTION: 0.5 each) with MONAI's DiceCELoss."""
    return DiceCELoss(
        include_background=params.include_background,
        to_onehot_y=True,
        softmax=True,
        lambda_dice=params.dice_weight,
        lambda_ce=params.ce_weight,
    )


class _StudentTeacher(Method):
    """Shared plumbing: a student ``net``, EMA copies named ``teacher*``, one EMA update per step.

    Subclasses list ``(teacher, student)`` module pairs in :attr:`ema_pairs`. Loading a state dict that has
    student weights but no teacher weights (``--init`` from a supervised or Chaitanya run) starts every
    teacher as a copy of its student, so student and teacher begin equal as in the reference.
    """

    @abstractmethod
    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(teacher, student)`` pairs moved by :func:`ema_update`."""

    def student_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not part of a teacher (frozen ones included: stages unfreeze them)."""
        teacher_ids = {id(p) for t, _ in self.ema_pairs() for p in t.parameters()}
        return [p for p in self.parameters() if id(p) not in teacher_ids]

    def param_groups(self) -> list[dict[str, Any]]:
        """All student parameters; SGD skips those without a gradient, so frozen stages stay unchanged."""
        return [{"params": self.student_parameters()}]

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load, then copy each student into its teacher when the state has no teacher weights."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        names = {id(m): n for n, m in self.named_children()}
        for teacher, student in self.ema_pairs():
            t_name, s_name = names[id(teacher)], names[id(student)]
            has_teacher = any(k.startswith(f"{t_name}.") for k in state_dict)
            has_student = any(k.startswith(f"{s_name}.") for k in state_dict)
            if has_student and not has_teacher:
                teacher.load_state_dict(student.state_dict())
        return result

    def on_step_end(self, step: int) -> None:
        """The step's single EMA update of every teacher."""
        for teacher, student in self.ema_pairs():
            ema_update(teacher, student, self.params.ema_momentum)


# ------------------------------------------------------------------------------------------ stages 1-2


class PretrainActionPPParams(MethodParams):
    """``method.*`` keys of ``pretrain_actionpp`` (ACTION/ACTION++ stages 1-2)."""

    stage1_steps: StepCount = Field(
        0.5,
        description="Length of stage 1 (global KL, encoder only): steps (integer) or a fraction of train.steps "
        "(decimal in [0, 1]; paper: 0.5); null (older configs): 0.5.",
    )
    ema_momentum: float = Field(0.99, ge=0, le=1, description="Teacher EMA momentum m (paper: 0.99).")
    queue_size: int = Field(36, ge=1, description="K: past teacher embeddings in each FIFO queue (code: 36).")
    global_dim: int = Field(512, ge=1, description="d_g of the global embedding (2D: 512, 3D: 128).")
    global_pool_grid: int = Field(
        4,
        ge=1,
        description="The global projection average-pools the bottleneck to grid^n cells (1: global pool, "
        "the authors' choice, nearly constant after instance norm).",
    )
    tau_student: float = Field(0.1, gt=0, description="KL temperature of the student (tau_s = 0.1).")
    tau_teacher: float = Field(0.01, gt=0, description="KL temperature of the teacher (2D 0.01, 3D 0.6).")
    window: int = Field(64, ge=1, description="Local windows: size in pixels (2D 64, 3D 20).")
    window_stride: int = Field(32, ge=1, description="Local windows: stride (2D 32, 3D 10).")
    window_pool: int = Field(8, ge=1, description="Cells per axis a window is pooled to (2D 8, 3D 4).")
    global_weight: float = Field(1.0, ge=0, description="Weight of the global KL.")
    local_weight: float = Field(1.0, ge=0, description="Weight of the local KL (stage 2).")
    dice_weight: float = Field(0.5, ge=0, description="Stage 2 supervised loss: weight of Dice (0.5).")
    ce_weight: float = Field(0.5, ge=0, description="Stage 2 supervised loss: weight of CE (0.5).")
    include_background: bool = Field(False, description="Count background in the Dice term.")
    jitter_prob: float = Field(0.5, ge=0, le=1, description="Teacher view: colour jitter probability.")
    blur_prob: float = Field(0.5, ge=0, le=1, description="Teacher view: Gaussian blur probability.")
    schedule: ScheduleParams = Field(
        default_factory=ScheduleParams,
        description="Temperature schedule; applies_to: kl_student, kl_teacher (ACTION++: cosine, tau_min null).",
    )

    @field_validator("stage1_steps", mode="before")
    @classmethod
    def _null_is_half(cls, value: Any) -> Any:
        # Configs written before step counts could be fractions say null for "half of train.steps".
        return 0.5 if value is None else value

    @model_validator(mode="after")
    def _check(self) -> PretrainActionPPParams:
        _check_applies_to(self.schedule, PRETRAIN_TEMPERATURES)
        block, rest = divmod(self.window, self.window_pool)
        if rest:
            raise ValueError(
                f"method.window ({self.window}) must be a multiple of method.window_pool ({self.window_pool})"
            )
        if self.window_stride % block:
            raise ValueError(
                f"method.window_stride ({self.window_stride}) must be a multiple of the pooling cell "
                f"window // window_pool = {block}"
            )
        return self


class PretrainActionPP(_StudentTeacher):
    """ACTION/ACTION++ stages 1-2: relational KL distillation, then + local KL + supervised loss.

    Streams: ``labeled`` (with labels, for stage 2's supervised loss and both KL terms) and ``unlabeled``
    (KL terms). Validation runs on the val cases (meaningful from stage 2 on, when the decoder trains).
    """

    name = "pretrain_actionpp"
    Params = PretrainActionPPParams
    streams: ClassVar[dict[str, bool]] = {"labeled": True, "unlabeled": False}
    params: PretrainActionPPParams

    def __init__(self, cfg: Config, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        p = self.params
        self.net = self.build_net()
        if self.net.name not in ENCODER_MODULES:
            raise ConfigError(
                f"pretrain_actionpp needs to know the encoder of model.name {self.net.name!r}; "
                f"supported: {', '.join(ENCODER_MODULES)}"
            )
        if p.window > min(spec.patch_size):
            raise ConfigError(
                f"method.window ({p.window}) is larger than data.patch_size {list(spec.patch_size)}; "
                "use a smaller window (e.g. patch / 4) or a larger patch"
            )
        self.total_steps = cfg.train.steps
        self.stage1_steps = int(p.stage1_steps)  # absolute: resolved against train.steps by Method
        dims, k = spec.spatial_dims, spec.num_classes
        channels = self.net.feature_channels()["embedding"]
        self.global_proj = LatentProjection(
            channels, p.global_dim, grid=p.global_pool_grid, spatial_dims=dims
        )
        self.global_pred = LatentPredictor(p.global_dim)
        self.local_proj = WindowProjection(k, dims)
        self.local_pred = WindowPredictor(k, dims)
        self.teacher = frozen_copy(self.net)
        self.teacher_global_proj = frozen_copy(self.global_proj)
        self.teacher_local_proj = frozen_copy(self.local_proj)
        windows = count_windows(spec.patch_size, p.window, p.window_stride, p.window_pool)
        self.global_queue = FeatureQueue(p.queue_size, (p.global_dim,))
        self.local_queue = FeatureQueue(p.queue_size, (windows, k * p.window_pool**dims))
        self.sup_loss = _sup_loss(p)
        self.encoder = ENCODER_MODULES[self.net.name]
        self._pending: dict[str, Tensor] = {}

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.teacher, self.net),
            (self.teacher_global_proj, self.global_proj),
            (self.teacher_local_proj, self.local_proj),
        ]

    def stage(self, step: int) -> int:
        """1 for the first ``stage1_steps`` steps, then 2."""
        return 1 if step < self.stage1_steps else 2

    def set_stage(self, stage: int) -> None:
        """Stage 1: encoder + global heads trainable, decoder and local heads frozen; stage 2: everything."""
        trainable = stage == 2
        self.net.requires_grad_(trainable)
        self.local_proj.requires_grad_(trainable)
        self.local_pred.requires_grad_(trainable)
        for name in self.encoder:
            getattr(self.net.net, name).requires_grad_(True)

    def _temperatures(self, step: int) -> tuple[float, float]:
        p = self.params
        tau_s = scheduled_temperature(p.schedule, "kl_student", p.tau_student, step, self.total_steps)
        tau_t = scheduled_temperature(p.schedule, "kl_teacher", p.tau_teacher, step, self.total_steps)
        return tau_s, tau_t

    def training_step(self, batch: dict[str, Any], step: int) -> dict[str, Tensor | float]:
        p = self.params
        stage = self.stage(step)
        self.set_stage(stage)  # a function of the step, so --resume lands in the right stage
        labeled = batch["labeled"]
        images = [labeled["image"]] + ([batch["unlabeled"]["image"]] if "unlabeled" in batch else [])
        x = torch.cat(images)  # (B, C, *S): labeled first
        n_lab = labeled["image"].shape[0]
        gen = step_generator(self.cfg.train.seed, step, x.device)
        # The teacher's view is a new tensor: the student keeps the un-jittered batch.
        x_teacher = gaussian_blur(
            colour_jitter(x, prob=p.jitter_prob, generator=gen), prob=p.blur_prob, generator=gen
        )
        tau_s, tau_t = self._temperatures(step)

        out = self.net(x, return_features=True)
        assert isinstance(out, NetOutput)
        with torch.no_grad():
            out_t = self.teacher(x_teacher, return_features=True)
            assert isinstance(out_t, NetOutput)
            z_t = self.teacher_global_proj(out_t.embedding)  # (B, d_g)
        z_s = self.global_pred(self.global_proj(out.embedding))  # (B, d_g)
        l_global = relational_kl(z_s, z_t, self.global_queue.keys, tau_s, tau_t)
        loss = p.global_weight * l_global
        result: dict[str, Tensor | float] = {"global": l_global.detach()}
        self._pending = {"global": z_t}
        if stage == 2:
            with torch.no_grad():
                w_t = window_embeddings(
                    out_t.logits, p.window, p.window_stride, p.window_pool, self.teacher_local_proj
                )
            w_s = window_embeddings(
                out.logits, p.window, p.window_stride, p.window_pool, self.local_proj, self.local_pred
            )
            l_local = relational_kl(w_s, w_t, self.local_queue.keys, tau_s, tau_t)  # (B, W, K p^n) each
            l_sup = self.sup_loss(out.logits[:n_lab], labeled["label"])
            loss = loss + p.local_weight * l_local + l_sup
            result.update(local=l_local.detach(), sup=l_sup.detach())
            self._pending["local"] = w_t
        result.update(loss=loss, tau=tau_s, tau_student=tau_s, tau_teacher=tau_t, stage=float(stage))
        return result

    def on_step_end(self, step: int) -> None:
        """EMA update, then enqueue this step's teacher embeddings (never inside the graph of the loss)."""
        super().on_step_end(step)
        if "global" in self._pending:
            self.global_queue.push(self._pending["global"])
        if "local" in self._pending:
            self.local_queue.push(self._pending["local"])
        self._pending = {}

    def inference_network(self) -> SegNet:
        return self.net


# ------------------------------------------------------------------------------------------ stage 3


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


class ActionPPParams(MethodParams):
    """``method.*`` keys of ``actionpp`` (ACTION/ACTION++ stage 3)."""

    inference: Literal["student", "teacher"] = Field(
        "student", description="Network validated and exported (the authors test the student)."
    )
    ema_momentum: float = Field(0.99, ge=0, le=1, description="Teacher EMA momentum m (0.99).")
    dice_weight: float = Field(0.5, ge=0, description="L_sup: weight of Dice (0.5).")
    ce_weight: float = Field(0.5, ge=0, description="L_sup: weight of CE (0.5).")
    include_background: bool = Field(False, description="Count background in the Dice term.")
    unsup_weight: float = Field(1.0, ge=0, description="Weight of the pseudo-label loss L_unsup.")
    pseudo_threshold: float = Field(
        0.97, ge=0, le=1, description="Teacher confidence of a 'confident' pixel."
    )
    unsup_weighting: Literal["fraction", "mask"] = Field(
        "fraction",
        description="fraction: CE on all pixels x fraction of confident pixels per image (code); mask: CE on "
        "confident pixels only.",
    )
    mix: MixMode = Field("classmix", description="Strong view mixing: classmix (code default), cutmix, none.")
    jitter_prob: float = Field(0.5, ge=0, le=1, description="Strong view: colour jitter probability.")
    blur_prob: float = Field(0.5, ge=0, le=1, description="Strong view: Gaussian blur probability.")
    rep_dim: int = Field(128, ge=2, description="D of the representation head (paper: 128; 2D code: 496).")
    rep_scale: int = Field(
        1, ge=1, description="Representation at 1/rep_scale of the output size (1 = full, as the reference)."
    )
    anco: AnCoParams = Field(default_factory=AnCoParams, description="Anatomical contrast.")
    saacl: SAACLParams = Field(default_factory=SAACLParams, description="Adaptive anatomical contrast.")
    schedule: ScheduleParams = Field(
        default_factory=ScheduleParams, description="Temperature schedule; applies_to: anco, saacl."
    )

    @model_validator(mode="after")
    def _check(self) -> ActionPPParams:
        _check_applies_to(self.schedule, FINETUNE_TEMPERATURES)
        return self


class ActionPP(_StudentTeacher):
    """ACTION/ACTION++ stage 3: pseudo-labels on strong views + AnCo + SAACL (see the module docstring)."""

    name = "actionpp"
    metrics: ClassVar[frozenset[str]] = frozenset({"confident_fraction", "pseudo_dice"})
    Params = ActionPPParams
    streams: ClassVar[dict[str, bool]] = {"labeled": True, "unlabeled": False}
    params: ActionPPParams

    def __init__(self, cfg: Config, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        p = self.params
        if p.rep_scale > 1 and any(s % p.rep_scale for s in spec.patch_size):
            raise ConfigError(
                f"method.rep_scale ({p.rep_scale}) must divide every data.patch_size value {list(spec.patch_size)}"
            )
        self.total_steps = cfg.train.steps
        self.use_anco = p.anco.weight > 0
        self.use_saacl = p.saacl.weight > 0
        self.net = self.build_net()
        self.teacher = frozen_copy(self.net)
        self.rep_head: RepresentationHead | None = None
        self.teacher_rep_head: RepresentationHead | None = None
        self.centers: AdaptiveCenters | None = None
        self.saacl_queue: FeatureQueue | None = None
        if self.use_anco or self.use_saacl:
            channels = sum(self.net.feature_channels().values())  # bottleneck + every decoder map
            self.rep_head = RepresentationHead(channels, p.rep_dim, spec.spatial_dims)
        if self.use_saacl:
            assert self.rep_head is not None
            self.teacher_rep_head = frozen_copy(self.rep_head)
            centers = uniform_centers(
                spec.num_classes,
                p.rep_dim,
                p.saacl.centers,
                steps=p.saacl.center_steps,
                seed=cfg.train.seed,
                cache_dir=Path(cfg.output) / "cache" / "centers",
            )
            self.centers = AdaptiveCenters(centers, p.saacl.class_momentum)
            if p.saacl.denominator == "queue":
                self.saacl_queue = FeatureQueue(p.saacl.queue_size, (p.rep_dim,), labels=True, init="empty")
        self.sup_loss = _sup_loss(p)
        self._pending: tuple[Tensor, Tensor] | None = None

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
        """Pseudo-label cross-entropy on the strong view.

        ``fraction`` (the authors'): per-pixel CE, times the fraction of the image's pixels with confidence
        >= ``pseudo_threshold``, averaged over pixels with non-zero loss. ``mask``: CE averaged over the
        confident pixels only.

        Args:
            logits: Student logits on the strong view. Shape: ``(B, K, *S)``.
            pseudo: Mixed pseudo-labels. Shape: ``(B, *S)``.
            confidence: Mixed teacher confidences. Shape: ``(B, *S)``.
        """
        ce = F.cross_entropy(logits.float(), pseudo, reduction="none")  # (B, *S)
        confident = confidence >= self.params.pseudo_threshold  # (B, *S)
        if self.params.unsup_weighting == "mask":
            return (ce * confident).sum() / confident.sum().clamp(min=1)
        frac = confident.flatten(1).float().mean(dim=1)  # (B,)
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
        gen = step_generator(self.cfg.train.seed, step, x_l.device)
        taus = self.temperatures(step)
        need_rep = self.rep_head is not None

        # Teacher: pseudo-labels on the weak unlabeled view; SAACL keys on the labeled slices.
        keys_l = None
        x_s = pseudo = conf = quality = None
        with torch.no_grad():
            t_inputs = ([x_u] if x_u is not None else []) + ([x_l] if self.use_saacl else [])
            if t_inputs:
                t_out = self.teacher(torch.cat(t_inputs), return_features=self.use_saacl)
                t_logits = t_out.logits if isinstance(t_out, NetOutput) else t_out
                if x_u is not None:
                    prob_u = torch.softmax(t_logits[: x_u.shape[0]].float(), dim=1)  # (Bu, K, *S)
                    conf, pseudo = prob_u.max(dim=1)  # (Bu, *S) each
                    withheld = batch["unlabeled"].get("label")  # train.pseudo_dice only; never a loss
                    if withheld is not None:
                        quality = pseudo_label_dice(pseudo, withheld, k)
                    x_s, pseudo, conf = strong_view(
                        x_u,
                        pseudo,
                        conf,
                        mode=p.mix,
                        num_classes=k,
                        jitter_prob=p.jitter_prob,
                        blur_prob=p.blur_prob,
                        generator=gen,
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
        x = x_l if x_s is None else torch.cat([x_l, x_s])
        out = self.net(x, return_features=need_rep)
        logits = out.logits if isinstance(out, NetOutput) else out  # (B, K, *S)
        l_sup = self.sup_loss(logits[:n_lab], y_l.unsqueeze(1))
        loss = l_sup
        result: dict[str, Tensor | float] = {"sup": l_sup.detach()}
        if x_s is not None:
            assert pseudo is not None and conf is not None
            l_unsup = self.unsup_loss(logits[n_lab:], pseudo, conf)
            loss = loss + p.unsup_weight * l_unsup
            result["unsup"] = l_unsup.detach()
            result["confident_fraction"] = (conf >= p.pseudo_threshold).float().mean()

        if need_rep:
            assert isinstance(out, NetOutput) and self.rep_head is not None
            rep = self._representation(self.rep_head, out)  # (B, D, *S/s)
        if self.use_anco:
            labels = y_l if pseudo is None else torch.cat([y_l, pseudo])  # (B, *S)
            valid = torch.ones_like(y_l, dtype=torch.bool)
            if conf is not None:
                valid = torch.cat([valid, conf >= p.anco.weak_threshold])
            prob = torch.softmax(logits.detach().float(), dim=1)  # (B, K, *S)
            flat = flatten_valid(rep, self._subsample(labels), self._subsample(valid), self._subsample(prob))
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
            self._pending = (keys, key_labels)
        # train/tau: the first scheduled loss's temperature, else the first active loss's.
        used = [name for name, on in (("anco", self.use_anco), ("saacl", self.use_saacl)) if on]
        scheduled = [name for name in FINETUNE_TEMPERATURES if name in p.schedule.applies_to]
        result.update({f"tau_{name}": taus[name] for name in used})
        result.update(loss=loss, tau=taus[(scheduled or used or ["anco"])[0]])
        if quality is not None:
            result["pseudo_dice"] = quality
        return result

    def on_step_end(self, step: int) -> None:
        """EMA update, then enqueue this step's SAACL teacher keys."""
        super().on_step_end(step)
        if self._pending is not None and self.saacl_queue is not None:
            self.saacl_queue.push(*self._pending)
        self._pending = None

    def inference_network(self) -> SegNet:
        return self.teacher if self.params.inference == "teacher" else self.net
