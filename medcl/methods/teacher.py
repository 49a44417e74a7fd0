"""Student-teacher plumbing: an EMA teacher that never receives gradients, and FIFO feature queues.

* :func:`frozen_copy` makes the teacher: a deep copy of the student modules with ``requires_grad`` off, so the
  optimiser never sees it and the engine's gradient clipping skips it.
* :func:`ema_update` moves it once per step, after the optimiser step (``Method.on_step_end``):
  ``theta_t <- m theta_t + (1 - m) theta_s`` for parameters (mean teacher [0], m = 0.99 in ACTION [1]) and a
  plain copy for buffers (BatchNorm running statistics, counters), whose average is meaningless.
* :class:`FeatureQueue` is a MoCo-style [2] ring buffer of detached keys (with optional integer labels) held in
  registered buffers, so checkpoints carry it and ``--resume`` continues with the same memory.

- [0] A. Tarvainen, H. Valpola, "Mean teachers are better role models", NeurIPS 2017,
  https://arxiv.org/abs/1703.01780
- [1] C. You, W. Dai, Y. Min, L. Staib, J. S. Duncan, "Bootstrapping Semi-supervised Medical Image
  Segmentation with Anatomical-aware Contrastive Distillation", IPMI 2023, https://arxiv.org/abs/2206.02307
- [2] K. He, H. Fan, Y. Wu, S. Xie, R. Girshick, "Momentum Contrast for Unsupervised Visual Representation
  Learning", CVPR 2020, https://arxiv.org/abs/1911.05722
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeatureQueue", "ema_update", "frozen_copy"]

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
