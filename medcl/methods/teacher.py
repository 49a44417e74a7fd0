"""Student-teacher pieces shared by the semi-supervised methods: EMA teacher, pseudo-labels, weak->strong views.

A semi-supervised method built from these is a small file: subclass :class:`StudentTeacher` (its ``Params``
subclass :class:`TeacherParams`), list its ``(teacher, student)`` pairs in ``ema_pairs``, and in
``training_step`` turn the teacher's logits on the weak view into a :class:`StrongView` with
:func:`weak_to_strong`. FixMatch, whose "teacher" is the student itself under ``torch.no_grad``, uses only
:func:`weak_to_strong`.

* **EMA teacher.** :func:`frozen_copy` makes the teacher: a deep copy of the student modules with
  ``requires_grad`` off, so the optimiser never sees it and the engine's gradient clipping skips it.
  :func:`ema_update` moves it once per step, after the optimiser step (:meth:`StudentTeacher.on_step_end`):
  ``theta_t <- m theta_t + (1 - m) theta_s`` for parameters (mean teacher [0], m = 0.99 in ACTION [1]) and a
  plain copy for buffers (BatchNorm running statistics, counters), whose average is meaningless.
* **Pseudo-labels.** :func:`pseudo_labels`: the argmax of the teacher's softmax and its maximum (the
  confidence); :func:`confident`: the pixels whose confidence reaches a threshold.
* **Weak -> strong.** :func:`weak_to_strong`: pseudo-labels of the weak view, then the strong view of the same
  images (CutMix/ClassMix with the pseudo-labels and confidences mixed alike, colour jitter, blur:
  :func:`medcl.data.mixing.strong_view`), as FixMatch [2] and UniMatch [3] for segmentation.
* **Queues.** :class:`FeatureQueue` is a MoCo-style [4] ring buffer of detached keys (with optional integer
  labels) held in registered buffers, so checkpoints carry it and ``--resume`` continues with the same memory.
  A step's teacher keys enter their queue only after the optimiser step, never inside the graph of the loss:
  ``training_step`` hands them to :meth:`StudentTeacher.push_after_step`, :meth:`StudentTeacher.on_step_end`
  pushes them.

- [0] A. Tarvainen, H. Valpola, "Mean teachers are better role models", NeurIPS 2017,
  https://arxiv.org/abs/1703.01780
- [1] C. You, W. Dai, Y. Min, L. Staib, J. S. Duncan, "Bootstrapping Semi-supervised Medical Image
  Segmentation with Anatomical-aware Contrastive Distillation", IPMI 2023, https://arxiv.org/abs/2206.02307
- [2] K. Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
  NeurIPS 2020, https://arxiv.org/abs/2001.07685
- [3] L. Yang, L. Qi, L. Feng, W. Zhang, Y. Shi, "Revisiting Weak-to-Strong Consistency in Semi-Supervised
  Semantic Segmentation" (UniMatch), CVPR 2023, https://arxiv.org/abs/2208.09910
- [4] K. He, H. Fan, Y. Wu, S. Xie, R. Girshick, "Momentum Contrast for Unsupervised Visual Representation
  Learning", CVPR 2020, https://arxiv.org/abs/1911.05722
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medcl.config import MethodParams
from medcl.data.mixing import MixMode, strong_view
from medcl.methods.base import DataSpec, Method, RunFacts, pseudo_label_dice

__all__ = [
    "FeatureQueue",
    "QueuePush",
    "StrongView",
    "StudentTeacher",
    "TeacherParams",
    "confident",
    "ema_update",
    "frozen_copy",
    "pseudo_labels",
    "weak_to_strong",
]

M = TypeVar("M", bound=nn.Module)


def frozen_copy(module: M) -> M:
    """A deep copy of ``module`` whose parameters never require gradients (the teacher)."""
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """One EMA step of ``teacher`` towards ``student`` (same architecture), in place.

    Args:
        teacher: The EMA copy.
        student: The trained module.
        momentum: ``m`` in ``theta_t <- m theta_t + (1 - m) theta_s`` (0.99 in [1]).

    Raises:
        ValueError: When ``momentum`` is outside ``[0, 1]`` or the two modules differ in structure.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1]; got {momentum}.")
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError(
            "teacher and student have different parameter lists; build the teacher with frozen_copy"
        )
    if t_params:
        # One fused multiply-add over all tensors: t = m * t + (1 - m) * s.
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, [s.detach() for s in s_params], alpha=1.0 - momentum)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers(), strict=True):
        t_buf.copy_(s_buf)


def pseudo_labels(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Hard pseudo-labels of a teacher's logits and their confidence.

    The softmax is taken in float32 (logits may come from a bf16 network); the confidence of a pixel is its
    largest class probability and its pseudo-label that class.

    Args:
        logits: Teacher logits. Shape: ``(B, K, *S)``.

    Returns:
        ``(confidence, labels)``: the max probability, float32, and the argmax, int64. Shape: ``(B, *S)`` each.

    Example:
        >>> confidence, labels = pseudo_labels(torch.tensor([[[0.0], [2.0]]]))  # (1, 2, 1): K = 2, one pixel
        >>> labels.tolist(), round(confidence.item(), 4)
        ([[1]], 0.8808)
    """
    prob = torch.softmax(logits.float(), dim=1)  # (B, K, *S)
    confidence, labels = prob.max(dim=1)  # (B, *S) each
    return confidence, labels


def confident(confidence: Tensor, threshold: float) -> Tensor:
    """The pixels whose teacher confidence reaches ``threshold`` (``>=``). Shape: as ``confidence``, bool."""
    return confidence >= threshold


@dataclass(frozen=True)
class StrongView:
    """The student's view of an unlabeled batch and its targets, from :func:`weak_to_strong`.

    Attributes:
        image: The strong view. Shape: ``(B, C, *S)``.
        labels: The pseudo-labels, mixed like the images. Shape: ``(B, *S)``, int64.
        confidence: The teacher's confidences, mixed alike. Shape: ``(B, *S)``, float32.
        quality: Mean foreground Dice of the weak view's pseudo-labels against withheld labels
            (``train/pseudo_dice``; :func:`medcl.methods.base.pseudo_label_dice`), None without them.
        weak_labels: The weak view's own pseudo-labels, before mixing (FixMatch's feature-perturbation
            stream trains on them); None where the view was built by hand. Shape: ``(B, *S)``, int64.
        weak_confidence: Their confidences, before mixing. Shape: ``(B, *S)``.
    """

    image: Tensor
    labels: Tensor
    confidence: Tensor
    quality: Tensor | None = None
    weak_labels: Tensor | None = None
    weak_confidence: Tensor | None = None

    def confident(self, threshold: float) -> Tensor:
        """:func:`confident` on the mixed confidences. Shape: ``(B, *S)``, bool."""
        return confident(self.confidence, threshold)


@torch.no_grad()
def weak_to_strong(
    weak_logits: Tensor,
    weak_image: Tensor,
    *,
    mix: MixMode,
    num_classes: int,
    jitter_prob: float,
    blur_prob: float,
    generator: torch.Generator,
    withheld: Tensor | None = None,
) -> StrongView:
    """The weak -> strong step: pseudo-label the weak view, then build the strong view and mix the targets alike.

    Args:
        weak_logits: The teacher's logits on the weak view (the sampler's flips and rotations only).
            Shape: ``(B, K, *S)``.
        weak_image: The weak view. Shape: ``(B, C, *S)``.
        mix: ``"cutmix"``, ``"classmix"`` or ``"none"`` (:func:`medcl.data.mixing.strong_view`).
        num_classes: ``K``.
        jitter_prob: Probability of colour jitter per image.
        blur_prob: Probability of Gaussian blur per image.
        generator: The step's random source (:func:`medcl.data.mixing.step_generator`), so a resumed run
            draws the same boxes and jitter again.
        withheld: Withheld labels of the weak view (``train.pseudo_dice`` only; never a loss).
            Shape: ``(B, 1, *S)`` or ``(B, *S)``.

    Returns:
        The strong view with its pseudo-labels and confidences; new tensors, ``weak_image`` is unchanged.
    """
    weak_confidence, weak_labels = pseudo_labels(weak_logits)  # (B, *S) each
    quality = None if withheld is None else pseudo_label_dice(weak_labels, withheld, num_classes)
    image, labels, confidence = strong_view(
        weak_image,
        weak_labels,
        weak_confidence,
        mode=mix,
        num_classes=num_classes,
        jitter_prob=jitter_prob,
        blur_prob=blur_prob,
        generator=generator,
    )
    return StrongView(image, labels, confidence, quality, weak_labels, weak_confidence)


class FeatureQueue(nn.Module):
    """A FIFO memory of ``size`` keys of shape ``shape`` (and optional labels), stored in buffers.

    New keys overwrite the oldest ones; a batch larger than the queue keeps its last ``size`` keys. Slots
    not written yet are either random unit vectors (``init="random"``, as ISD/MoCo initialise their memory)
    or zeros with label -1 (``init="empty"``; :attr:`filled` tells them apart).

    Args:
        size: Number of slots ``Q``.
        shape: Shape of one key, e.g. ``(D,)`` or ``(W, D)``.
        labels: Also keep an int64 label per slot.
        init: ``"random"`` (normalised Gaussian over the last axis) or ``"empty"``.

    Example:
        >>> q = FeatureQueue(4, (2,), labels=True, init="empty")
        >>> q.push(torch.ones(3, 2), torch.tensor([0, 1, 1]))
        >>> q.filled.tolist()
        [True, True, True, False]
    """

    keys: Tensor
    labels: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(
        self, size: int, shape: tuple[int, ...], *, labels: bool = False, init: str = "random"
    ) -> None:
        """Allocate the buffers."""
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be at least 1; got {size}.")
        if init not in ("random", "empty"):
            raise ValueError(f"init must be 'random' or 'empty'; got {init!r}.")
        start = (
            F.normalize(torch.randn(size, *shape), dim=-1) if init == "random" else torch.zeros(size, *shape)
        )
        self.size = size
        self.with_labels = labels
        self.init = init
        self.register_buffer("keys", start)
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def filled(self) -> Tensor:
        """Which slots hold a pushed key (random-initialised queues count as full). Shape: ``(Q,)``."""
        if self.with_labels:
            return self.labels >= 0
        if self.init == "random":
            return torch.ones(self.size, dtype=torch.bool, device=self.keys.device)
        return torch.arange(self.size, device=self.keys.device) < self.count

    @torch.no_grad()
    def push(self, keys: Tensor, labels: Tensor | None = None) -> None:
        """Write ``keys`` (and ``labels``) over the oldest slots.

        Args:
            keys: Shape: ``(N, *shape)``; detached and cast to the queue's dtype.
            labels: Shape: ``(N,)``; required when the queue keeps labels.
        """
        if self.with_labels and labels is None:
            raise ValueError("this queue keeps labels: pass labels with the keys")
        keys = keys.detach().to(self.keys.dtype)[-self.size :]  # (n, *shape), n <= Q
        n = keys.shape[0]
        if n == 0:
            return
        slots = (self.ptr + torch.arange(n, device=self.keys.device)) % self.size  # (n,)
        self.keys[slots] = keys
        if labels is not None:
            self.labels[slots] = labels.detach()[-self.size :].long()
        self.ptr.copy_((self.ptr + n) % self.size)
        self.count.add_(n)


@dataclass(frozen=True)
class QueuePush:
    """Keys (and labels) of one step waiting for the end of the step to enter ``queue``."""

    queue: FeatureQueue
    keys: Tensor
    labels: Tensor | None = None


class TeacherParams(MethodParams):
    """``method.*`` keys of every method with an EMA teacher."""

    ema_momentum: float = Field(0.99, ge=0, le=1, description="Teacher EMA momentum m (paper: 0.99).")


class StudentTeacher(Method):
    """A method with a student ``net`` and EMA teachers: one EMA update per step, then the step's queue pushes.

    Subclasses list ``(teacher, student)`` module pairs in :meth:`ema_pairs` (teachers built with
    :func:`frozen_copy`); their ``Params`` subclass :class:`TeacherParams`. Teacher keys that a step adds to a
    :class:`FeatureQueue` are handed to :meth:`push_after_step` in ``training_step`` and pushed by
    :meth:`on_step_end`, after the optimiser step, so the loss of a step never sees its own keys in the queue.

    Loading a state dict that has student weights but no teacher weights (``--init`` from a supervised or
    Chaitanya run) starts every teacher as a copy of its student, so student and teacher begin equal as in the
    reference.
    """

    params: TeacherParams

    def __init__(self, params: MethodParams, run: RunFacts, spec: DataSpec) -> None:
        super().__init__(params, run, spec)
        self.pending_pushes: list[QueuePush] = []

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

    def forward(self, batch: dict[str, Any], step: int) -> dict[str, Tensor | float]:
        # A step that never reached on_step_end (an exception, a test) leaves no keys for the next one.
        self.pending_pushes = []
        return super().forward(batch, step)

    def push_after_step(self, queue: FeatureQueue, keys: Tensor, labels: Tensor | None = None) -> None:
        """Have :meth:`on_step_end` push ``keys`` (and ``labels``) into ``queue`` (see :meth:`FeatureQueue.push`)."""
        self.pending_pushes.append(QueuePush(queue, keys, labels))

    def on_step_end(self, step: int) -> None:
        """The step's single EMA update of every teacher, then the queue pushes of the step."""
        for teacher, student in self.ema_pairs():
            ema_update(teacher, student, self.params.ema_momentum)
        pushes, self.pending_pushes = self.pending_pushes, []
        for push in pushes:
            push.queue.push(push.keys, push.labels)
