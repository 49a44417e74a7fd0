"""ACTION/ACTION++ stages 1-2 (``pretrain_actionpp``, ``medcl pretrain``): relational KL distillation.

A student network and its EMA teacher (``m = 0.99``, one update per step, after the optimiser step; the
teacher never receives gradients; :class:`~medcl.methods.teacher.StudentTeacher`) [0, 1], in one run:

- stage 1 (the first ``stage1_steps`` steps): **global relational KL distillation** - the student's
  bottleneck embedding (pooled to a 4x4 grid -> two linear layers -> predictor) learns the teacher's similarity
  distribution over a FIFO queue of past teacher embeddings (:func:`medcl.losses.relational.relational_kl`);
  only the encoder (and the global heads) train, the decoder is frozen;
- stage 2 (the remaining steps): encoder + decoder, global KL + **local relational KL** on pooled windows
  of the segmentation logits + the supervised loss ``0.5 (Dice + CE)`` on the labeled slices
  (:class:`~medcl.methods.supervised_loss.SupervisedLoss`).

The teacher sees its own copy of the batch with colour jitter and blur (the authors jitter the shared
tensor in place, so their student sees it too: bug (i) of the methods notes, not reproduced). Stage 3 is
``actionpp`` (:mod:`medcl.methods.actionpp`), initialised from this run with ``--init``.

Label protocol: stage 2 trains on labeled slices, so a label-count comparison must give pretraining the same
``--splits`` and ``--labeled N`` as stage 3. Without ``--splits`` both stages use the same seeded 80/20 split of
the labeled cases (the method validates, so the 20% are validation cases and never train).

- [0] C. You, W. Dai, Y. Min, L. Staib, J. S. Duncan, "Bootstrapping Semi-supervised Medical Image
  Segmentation with Anatomical-aware Contrastive Distillation", IPMI 2023, https://arxiv.org/abs/2206.02307
- [1] C. You, W. Dai, Y. Min, L. Staib, J. Sekhon, J. S. Duncan, "ACTION++: Improving Semi-supervised Medical
  Image Segmentation with Adaptive Anatomical Contrast", MICCAI 2023, https://arxiv.org/abs/2304.02689
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from medcl.config import MethodParams
from medcl.data.mixing import colour_jitter, gaussian_blur, step_generator
from medcl.errors import ConfigError
from medcl.losses.relational import relational_kl
from medcl.methods.base import DataSpec, RunFacts, check_schedule_targets
from medcl.methods.pretrain import ENCODER_MODULES, embedding_stats
from medcl.methods.supervised_loss import SupervisedLoss, SupervisedLossParams
from medcl.methods.teacher import FeatureQueue, StudentTeacher, TeacherParams, frozen_copy
from medcl.models.action_heads import (
    LatentPredictor,
    LatentProjection,
    WindowPredictor,
    WindowProjection,
    count_windows,
    window_embeddings,
)
from medcl.models.segnet import NetOutput, SegNet
from medcl.schedules import ScheduleParams, StepCount, scheduled_temperature

__all__ = ["PRETRAIN_TEMPERATURES", "PretrainActionPP", "PretrainActionPPParams"]

#: The losses whose temperature ``method.schedule`` may schedule.
PRETRAIN_TEMPERATURES = ("kl_student", "kl_teacher")


class PretrainActionPPParams(TeacherParams, SupervisedLossParams):
    """``method.*`` keys of ``pretrain_actionpp`` (ACTION/ACTION++ stages 1-2).

    ``ema_momentum`` (:class:`~medcl.methods.teacher.TeacherParams`) and the stage-2 supervised loss's
    ``dice_weight``, ``ce_weight``, ``include_background``
    (:class:`~medcl.methods.supervised_loss.SupervisedLossParams`, 0.5 each as in [0]) are inherited.
    """

    stage1_steps: StepCount = Field(
        0.5,
        description="Length of stage 1 (global KL, encoder only): steps (integer) or a fraction of train.steps "
        "(decimal in [0, 1]; paper: 0.5); null (older configs): 0.5.",
    )
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
        check_schedule_targets(self.schedule, PRETRAIN_TEMPERATURES)
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


class PretrainActionPP(StudentTeacher):
    """ACTION/ACTION++ stages 1-2: relational KL distillation, then + local KL + supervised loss.

    Streams: ``labeled`` (with labels, for stage 2's supervised loss and both KL terms) and ``unlabeled``
    (KL terms). Validation runs on the val cases (meaningful from stage 2 on, when the decoder trains).
    """

    name = "pretrain_actionpp"
    kind = "pretrain"
    Params = PretrainActionPPParams
    streams: ClassVar[dict[str, bool]] = {"labeled": True, "unlabeled": False}
    metrics: ClassVar[frozenset[str]] = frozenset({"emb_cos_mean", "emb_std"})
    params: PretrainActionPPParams

    def __init__(self, params: MethodParams, run: RunFacts, spec: DataSpec) -> None:
        super().__init__(params, run, spec)
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
        self.total_steps = run.steps
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
        self.sup_loss = SupervisedLoss.from_params(p)
        self.encoder = ENCODER_MODULES[self.net.name]

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
        gen = step_generator(self.run.seed, step, x.device)
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
        projection = self.global_proj(out.embedding)  # (B, d_g)
        z_s = self.global_pred(projection)
        l_global = relational_kl(z_s, z_t, self.global_queue.keys, tau_s, tau_t)
        loss = p.global_weight * l_global
        # Collapse indicators of the student's global embedding: a global KL of ~0 at a low teacher
        # temperature with emb_cos_mean ~1 means every image maps to one vector, not a solved task.
        result: dict[str, Tensor | float] = {"global": l_global.detach(), **embedding_stats(projection)}
        self.push_after_step(self.global_queue, z_t)  # after the optimiser step, with the EMA update
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
            self.push_after_step(self.local_queue, w_t)
        result.update(loss=loss, tau=tau_s, tau_student=tau_s, tau_teacher=tau_t, stage=float(stage))
        return result

    def inference_network(self) -> SegNet:
        return self.net
