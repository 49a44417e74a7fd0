"""SAACL: supervised adaptive anatomical contrast against uniform class centers (ACTION++ [0], parts b-d).

Anchors are student representations of labeled pixels (L2-normalised) with their ground-truth classes.
Every anchor is contrasted, with temperature ``tau_sa``, against a set of keys and the ``K`` fixed class
centers ``psi`` (uniform on the sphere, :mod:`medcl.models.centers`):

* its positives are the keys of the same class - its own teacher key (the EMA teacher's representation of
  the same pixel) and the same-class entries of the key memory;
* its **assigned center** ``nu_i = psi_{pi*(y_i)}`` is an extra positive weighted by ``lambda_a``;
* every softmax has the whole key set and all ``K`` centers in its denominator.

    L_saacl = -(1/n) sum_i [ sum_{k+ of y_i} log p_i(k+) + lambda_a log p_i(nu_i) ] / (#k+ + 1),
    p_i(x) = exp(a_i . x / tau_sa) / sum_{x' in keys U centers} exp(a_i . x' / tau_sa)

This is the loss as the authors implemented it (after targeted supervised contrast [1]); the key set is
configurable because the paper's formula uses in-batch features and the code a MoCo-style queue:

* ``denominator: batch`` - the keys are the teacher keys of this step's anchors (the own key is among them);
* ``denominator: queue`` - the keys are the anchor's own teacher key plus a FIFO queue of past teacher keys
  with their labels (12 288 in the code); empty queue slots are left out.

**Adaptive allocation** (:class:`AdaptiveCenters`): an EMA class mean
``phi_c <- normalise(0.9 phi_c + 0.1 normalise(mean of this step's anchors of class c))`` is kept for the
classes present in the step, and every step the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment`` on ``-cos(phi_c, psi_j)``) re-assigns centers to classes so that
the total distance is minimal. Centers, means and the assignment are registered buffers, so checkpoints carry
them and a resumed run continues with the same allocation.

Shape letters: N anchors, M keys, K classes (= centers), D representation size.

- [0] C. You, W. Dai, Y. Min, L. Staib, J. Sekhon, J. S. Duncan, "ACTION++: Improving Semi-supervised Medical
  Image Segmentation with Adaptive Anatomical Contrast", MICCAI 2023, https://arxiv.org/abs/2304.02689
- [1] T. Li, P. Cao, Y. Yuan, L. Fan, Y. Yang, R. Feris, P. Indyk, D. Katabi, "Targeted Supervised Contrastive
  Learning for Long-Tailed Recognition", CVPR 2022, https://arxiv.org/abs/2111.13998
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

__all__ = ["AdaptiveCenters", "hungarian_assignment", "saacl_loss"]


def hungarian_assignment(class_means: Tensor, centers: Tensor) -> Tensor:
    """The class -> center permutation minimising the summed distance (maximising the summed cosine).

    Args:
        class_means: EMA class means ``phi`` (any norm; zero rows are classes never seen). Shape: ``(K, D)``.
        centers: The uniform centers ``psi``. Shape: ``(K, D)``.

    Returns:
        ``assignment[c]`` = index of the center given to class ``c``, a permutation. Shape: ``(K,)``, int64.
    """
    if class_means.shape != centers.shape:
        raise ValueError(
            f"need as many centers as classes: class_means {tuple(class_means.shape)}, centers "
            f"{tuple(centers.shape)}."
        )
    cos = F.normalize(class_means.detach().double(), dim=1) @ F.normalize(centers.detach().double(), dim=1).T
    rows, cols = linear_sum_assignment(-cos.cpu().numpy())  # (K,), (K,): rows == arange(K)
    out = np.empty(len(rows), dtype=np.int64)
    out[rows] = cols
    return torch.from_numpy(out).to(centers.device)


def saacl_loss(
    anchors: Tensor,
    labels: Tensor,
    keys: Tensor,
    key_labels: Tensor,
    centers: Tensor,
    assignment: Tensor,
    *,
    tau: float,
    lambda_a: float,
    own_keys: Tensor | None = None,
) -> Tensor:
    """SAACL as implemented by the authors (see the module docstring).

    Args:
        anchors: Student representations, not normalised. Shape: ``(N, D)``.
        labels: Their classes. Shape: ``(N,)``, int64.
        keys: Teacher keys, not normalised; detached here. Shape: ``(M, D)``.
        key_labels: Classes of the keys; negative values mark empty slots (left out). Shape: ``(M,)``.
        centers: Uniform class centers ``psi``. Shape: ``(K, D)``.
        assignment: Center of each class (from :func:`hungarian_assignment`). Shape: ``(K,)``.
        tau: Temperature ``tau_sa``.
        lambda_a: Weight of the assigned-center term (0.2 in the paper, 0.1 in the 2D code).
        own_keys: Each anchor's own teacher key, an extra positive (the ``queue`` variant); ``None`` when the
            own key is already in ``keys`` (the ``batch`` variant). Shape: ``(N, D)``.

    Returns:
        The scalar loss (mean over anchors).

    Raises:
        ValueError: On a non-positive temperature or mismatched shapes.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive; got {tau}.")
    n, d = anchors.shape
    if labels.shape != (n,) or keys.ndim != 2 or keys.shape[1] != d or key_labels.shape != (keys.shape[0],):
        raise ValueError(
            f"expected anchors (N, D), labels (N,), keys (M, D), key_labels (M,); got {tuple(anchors.shape)}, "
            f"{tuple(labels.shape)}, {tuple(keys.shape)}, {tuple(key_labels.shape)}."
        )
    a = F.normalize(anchors.float(), dim=1)  # (N, D)
    k = F.normalize(keys.detach().float(), dim=1)  # (M, D)
    c = F.normalize(centers.detach().float(), dim=1)  # (K, D)
    filled = key_labels >= 0  # (M,)
    # One (N, M) pass: the softmax denominator as a logsumexp over [own key], keys and centers. 1 / tau is
    # applied to the (N, D) anchors, not to the (N, M) logits, and empty slots are dropped from the keys
    # (the queue is full after its first few steps) instead of masking an (N, M) matrix.
    a_tau = a / tau  # (N, D)
    logits_c = a_tau @ c.T  # (N, K)
    k_filled = k if bool(filled.all()) else k[filled]  # (M', D); M' = 0 gives a logsumexp of -inf
    parts = [torch.logsumexp(a_tau @ k_filled.T, dim=1), torch.logsumexp(logits_c, dim=1)]  # (N,) each
    # Sum over an anchor's same-class keys of a . k / tau is a . (sum of those keys) / tau: per-class key sums
    # (K, D) instead of an (N, M) positive mask. Empty slots go to an extra row that no label reads.
    num_classes = c.shape[0]
    slot = torch.where(filled, key_labels, num_classes)  # (M,)
    class_sums = k.new_zeros(num_classes + 1, d).index_add_(0, slot, k)  # (K + 1, D)
    class_counts = torch.bincount(slot, minlength=num_classes + 1)  # (K + 1,)
    pos_logit_sum = (a_tau * class_sums[labels]).sum(dim=1)  # (N,)
    n_pos = class_counts[labels].to(a.dtype)  # (N,)
    if own_keys is not None:
        own_logit = (a_tau * F.normalize(own_keys.detach().float(), dim=1)).sum(dim=1)  # (N,)
        parts.append(own_logit)
        pos_logit_sum = pos_logit_sum + own_logit
        n_pos = n_pos + 1
    lse = torch.logsumexp(torch.stack(parts, dim=1), dim=1)  # (N,): log of the softmax denominator
    pos_sum = pos_logit_sum - n_pos * lse  # sum of log p over the positives
    centre = logits_c.gather(1, assignment[labels].unsqueeze(1)).squeeze(1) - lse  # (N,)
    return (-(pos_sum + lambda_a * centre) / (n_pos + 1)).mean()


class AdaptiveCenters(nn.Module):
    """Uniform centers with EMA class means and a Hungarian class -> center assignment (all buffers).

    Args:
        centers: The ``K`` uniform centers (e.g. :func:`medcl.models.centers.uniform_centers`).
            Shape: ``(K, D)``.
        momentum: EMA momentum of the class means (0.9 in [0]).

    Example:
        >>> alloc = AdaptiveCenters(torch.eye(3))
        >>> alloc.update(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([0]))
        >>> alloc.assignment[0].item()
        1
    """

    centers: Tensor
    class_means: Tensor
    assignment: Tensor

    def __init__(self, centers: Tensor, momentum: float = 0.9) -> None:
        """Start with zero means (no class seen yet) and the identity assignment."""
        super().__init__()
        if centers.ndim != 2 or centers.shape[0] < 2:
            raise ValueError(f"centers must be (K >= 2, D); got {tuple(centers.shape)}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}.")
        self.momentum = momentum
        self.register_buffer("centers", F.normalize(centers.float(), dim=1))
        self.register_buffer("class_means", torch.zeros_like(self.centers))
        self.register_buffer("assignment", torch.arange(centers.shape[0]))

    @torch.no_grad()
    def update(self, anchors: Tensor, labels: Tensor) -> None:
        """EMA-update the means of the classes present in ``labels``, then re-assign the centers.

        Args:
            anchors: Anchor representations (normalised here). Shape: ``(N, D)``.
            labels: Their classes. Shape: ``(N,)``.
        """
        k = self.centers.shape[0]
        a = F.normalize(anchors.detach().float(), dim=1)  # (N, D)
        counts = torch.bincount(labels, minlength=k)  # (K,)
        sums = a.new_zeros(k, a.shape[1]).index_add_(0, labels, a)  # (K, D)
        batch_means = F.normalize(sums, dim=1)  # (K, D); the mean's direction
        present = (counts > 0).unsqueeze(1)  # (K, 1)
        moved = F.normalize(self.momentum * self.class_means + (1 - self.momentum) * batch_means, dim=1)
        # Absent classes keep their mean (pitfall 8 of the methods notes).
        self.class_means.copy_(torch.where(present, moved, self.class_means))
        self.assignment.copy_(hungarian_assignment(self.class_means, self.centers))
