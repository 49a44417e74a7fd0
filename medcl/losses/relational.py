"""Relational (similarity-distribution) KL distillation: ACTION stages 1-2, after ISD [1].

A student embedding ``p`` and a teacher embedding ``k`` of the same image are each compared with a memory
of ``Q`` past teacher embeddings ("mined views", a FIFO queue); the cosine similarities become two
distributions over the queue with temperatures ``tau_s`` (student) and ``tau_t`` (teacher), and the student
learns to reproduce the teacher's relations [0, 1]:

    u_s = softmax(cos(p, Q) / tau_s),   u_t = softmax(cos(k, Q) / tau_t),   L = KL(u_t || u_s)

The teacher distribution is the target, as in the authors' code (the ACTION paper writes KL(u_s || u_t));
``tau_t < tau_s`` (0.01 vs 0.1 in 2D) makes the target sharper than the prediction. Gradients reach only the
student: ``k`` and the queue are detached here.

:func:`relational_kl` handles both uses of ACTION: the global loss (one embedding per image against one
queue, ``(B, D)`` vs ``(Q, D)``) and the local loss (one embedding per image and window position against a
queue per position, ``(B, W, D)`` vs ``(Q, W, D)``).

Shape letters: B images, W window positions, Q queue entries, D embedding size.

- [0] C. You, W. Dai, Y. Min, L. Staib, J. S. Duncan, "Bootstrapping Semi-supervised Medical Image
  Segmentation with Anatomical-aware Contrastive Distillation", IPMI 2023, https://arxiv.org/abs/2206.02307
- [1] A. Tejankar, S. A. Koohpayegani, V. Pillai, P. Favaro, H. Pirsiavash, "ISD: Self-Supervised Learning by
  Iterative Similarity Distillation", ICCV 2021, https://arxiv.org/abs/2012.09259
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["relational_kl"]


def relational_kl(student: Tensor, teacher: Tensor, queue: Tensor, tau_s: float, tau_t: float) -> Tensor:
    """KL(u_t || u_s) between the teacher's and the student's similarity distributions over a queue.

    Args:
        student: Student (predictor) embeddings, not normalised. Shape: ``(B, D)`` or ``(B, W, D)``.
        teacher: Teacher embeddings of the same images (and windows), not normalised; detached here.
            Shape: as ``student``.
        queue: Past teacher embeddings; detached here. Shape: ``(Q, D)`` for ``(B, D)`` inputs, ``(Q, W, D)``
            (one queue per window position) for ``(B, W, D)`` inputs.
        tau_s: Student temperature (0.1 in [0]).
        tau_t: Teacher temperature (0.01 in 2D, 0.6 in the 3D script of [0]).

    Returns:
        The KL divergence summed over the queue and averaged over the B (x W) distributions, a scalar.

    Raises:
        ValueError: On non-positive temperatures or mismatched shapes.

    Example:
        >>> q = torch.randn(36, 128)
        >>> z = torch.randn(4, 128)
        >>> float(relational_kl(z, z, q, 0.1, 0.1))  # same embedding, same temperature
        0.0
    """
    if tau_s <= 0 or tau_t <= 0:
        raise ValueError(f"temperatures must be positive; got tau_s={tau_s}, tau_t={tau_t}.")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher embeddings differ in shape: {tuple(student.shape)} vs {tuple(teacher.shape)}"
        )
    if student.ndim == 2:
        if queue.ndim != 2 or queue.shape[1] != student.shape[1]:
            raise ValueError(f"queue must be (Q, {student.shape[1]}); got {tuple(queue.shape)}.")
        equation = "bd,qd->bq"
    elif student.ndim == 3:
        if queue.ndim != 3 or queue.shape[1:] != student.shape[1:]:
            raise ValueError(
                f"queue must be (Q, {student.shape[1]}, {student.shape[2]}); got {tuple(queue.shape)}."
            )
        equation = "bwd,qwd->bwq"
    else:
        raise ValueError(f"embeddings must be (B, D) or (B, W, D); got {tuple(student.shape)}.")
    memory = F.normalize(queue.detach().float(), dim=-1)  # (Q, [W,] D)
    s = F.normalize(student.float(), dim=-1)  # (B, [W,] D)
    t = F.normalize(teacher.detach().float(), dim=-1)  # (B, [W,] D)
    logits_s = torch.einsum(equation, s, memory) / tau_s  # (B, [W,] Q)
    logits_t = torch.einsum(equation, t, memory) / tau_t  # (B, [W,] Q)
    log_u_s = F.log_softmax(logits_s, dim=-1).flatten(0, -2)  # (B[*W], Q)
    log_u_t = F.log_softmax(logits_t, dim=-1).flatten(0, -2)  # (B[*W], Q)
    # sum_q u_t (log u_t - log u_s), averaged over the distributions; log-space target for stability.
    return F.kl_div(log_u_s, log_u_t, reduction="batchmean", log_target=True)
