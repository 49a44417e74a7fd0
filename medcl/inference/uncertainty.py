"""Voxel uncertainty maps, per-case uncertainty scores and the diversity-aware ranking behind ``medcl suggest``.

Everything here is a function of tensors or arrays; nothing reads files, loads models or logs. The shape letters
are K classes, X, Y, Z the spatial axes of one volume, N cases and D the embedding width.

Scores follow one convention: **higher means more worth labelling**.

* Entropy [0]: the normalised entropy ``H(p) / ln K`` of the softmax ``p`` (0 certain, 1 uniform), averaged
  over the predicted foreground and a border of a few voxels around it, where a model's mistakes live (the
  far background is easy and would drown the signal). A volume without predicted foreground is scored over
  all its voxels.
* TTA variance [1]: the per-class variance of the softmax over flips and quarter turns, averaged over the
  classes and the same region.
* Disagreement [2]: ``1 - Dice`` between the label maps of two networks trained together (MCSC's CNN and
  Transformer, or a student and its EMA teacher), mean over the foreground classes; identical networks score
  0. The voxel map is the total-variation distance ``0.5 * sum_k |p_a - p_b|`` between their softmaxes.
* Diversity [3]: greedy k-center selection weighted by uncertainty: each pick maximises
  ``u_i * min_j d(e_i, e_j)`` over the cases not picked yet, ``d`` the cosine distance between pooled
  bottleneck embeddings and ``j`` over the labelled cases and the earlier picks. A copy of a picked volume has
  distance 0 and is never picked while a different volume with any uncertainty is left.

- [0] D. Wang, Y. Shang, "A new active labeling method for deep learning", IJCNN 2014.
- [1] G. Wang et al., "Aleatoric uncertainty estimation with test-time augmentation for medical image
  segmentation with convolutional neural networks", Neurocomputing 2019, https://arxiv.org/abs/1807.07356
- [2] H. S. Seung, M. Opper, H. Sompolinsky, "Query by committee", COLT 1992.
- [3] O. Sener, S. Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach", ICLR
  2018, https://arxiv.org/abs/1708.00489
"""

from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "dice_agreement",
    "disagreement_map",
    "foreground_region",
    "greedy_diverse_order",
    "normalized_entropy",
    "region_mean",
]

_EPS = 1e-12


def normalized_entropy(probs: Tensor, dim: int = 0) -> Tensor:
    """Entropy of a categorical distribution divided by ``ln K``, in ``[0, 1]``.

    Args:
        probs: Probabilities summing to 1 along ``dim``. Shape: ``(K, *S)`` for ``dim=0``.
        dim: The class axis.

    Returns:
        ``-sum_k p_k ln p_k / ln K``; shape of ``probs`` without ``dim``. Zero for ``K = 1``.
    """
    k = probs.shape[dim]
    if k < 2:
        return probs.sum(dim) * 0.0
    p = probs.float().clamp_min(_EPS)
    return -(p * p.log()).sum(dim) / math.log(k)


def foreground_region(labels: Tensor, border: int = 3) -> Tensor:
    """The predicted foreground grown by ``border`` voxels along every axis (a cube dilation).

    Args:
        labels: Integer label map, 0 the background. Shape: ``(X, Y, Z)``.
        border: Voxels added around the foreground; 0 keeps the foreground itself.

    Returns:
        Boolean mask, shape ``(X, Y, Z)``; all False when nothing is predicted.
    """
    if border < 0:
        raise ValueError(f"border must be at least 0; got {border}.")
    fg = (labels > 0).float()[None, None]  # (1, 1, X, Y, Z)
    if border:
        fg = F.max_pool3d(fg, kernel_size=2 * border + 1, stride=1, padding=border)
    return fg[0, 0] > 0


def region_mean(values: Tensor, region: Tensor) -> float:
    """Mean of ``values`` inside ``region``; the mean over every voxel when the region is empty.

    Args:
        values: A voxel map. Shape: ``(X, Y, Z)``.
        region: Boolean mask of the same shape.
    """
    if bool(region.any()):
        return float(values[region].float().mean())
    return float(values.float().mean())


def dice_agreement(labels_a: Tensor, labels_b: Tensor, num_classes: int) -> float:
    """Mean Dice over the foreground classes between two label maps (a class absent from both counts 1).

    Args:
        labels_a: Integer label map. Shape: ``(X, Y, Z)``.
        labels_b: Same shape.
        num_classes: K, background included.

    Returns:
        1.0 for identical maps; 0.0 when no foreground voxel agrees.

    Raises:
        ValueError: The shapes differ or ``num_classes`` is below 2.
    """
    if labels_a.shape != labels_b.shape:
        raise ValueError(f"label maps differ in shape: {tuple(labels_a.shape)} vs {tuple(labels_b.shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (background + one class); got {num_classes}.")
    scores = []
    for k in range(1, num_classes):
        a, b = labels_a == k, labels_b == k
        total = int(a.sum()) + int(b.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((a & b).sum()) / total)
    return float(np.mean(scores))


def disagreement_map(probs_a: Tensor, probs_b: Tensor) -> Tensor:
    """Total-variation distance ``0.5 * sum_k |p_a - p_b|`` per voxel, in ``[0, 1]``.

    Args:
        probs_a: Softmax of one network. Shape: ``(K, X, Y, Z)``.
        probs_b: Softmax of the other, same shape.

    Returns:
        Shape ``(X, Y, Z)``.
    """
    return 0.5 * (probs_a.float() - probs_b.float()).abs().sum(0)


def greedy_diverse_order(
    uncertainty: np.ndarray, embeddings: np.ndarray, labeled: np.ndarray | None = None
) -> list[tuple[int, float]]:
    """Order every case by uncertainty-weighted greedy k-center selection (see the module docstring).

    Args:
        uncertainty: Non-negative score per case. Shape: ``(N,)``.
        embeddings: One embedding per case (normalised here). Shape: ``(N, D)``.
        labeled: Embeddings of cases already labelled, which count as picked. Shape: ``(M, D)``.

    Returns:
        ``(index, gain)`` for all N cases in pick order, where ``gain = u_i * min distance`` at the time of the
        pick (the first pick without labelled cases has distance 1 by convention, so its gain is ``u_i``). Ties
        go to the more uncertain case, then the lower index.

    Raises:
        ValueError: Shapes disagree, or an uncertainty is negative or not finite.
    """
    u = np.asarray(uncertainty, dtype=np.float64)
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] != u.shape[0]:
        raise ValueError(f"embeddings must be (N, D) with N = {u.shape[0]}; got shape {e.shape}.")
    if not np.isfinite(u).all() or (u < 0).any():
        raise ValueError("uncertainties must be finite and non-negative.")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), _EPS)
    n = u.shape[0]
    # Distance of every case to its nearest picked (or labelled) case; 1 until something is picked.
    nearest = np.ones(n)
    if labeled is not None and len(labeled):
        lab = np.asarray(labeled, dtype=np.float64)
        lab = lab / np.maximum(np.linalg.norm(lab, axis=1, keepdims=True), _EPS)
        nearest = np.clip(1.0 - e @ lab.T, 0.0, 2.0).min(axis=1)  # (N,)
    left = np.ones(n, dtype=bool)
    order: list[tuple[int, float]] = []
    for _ in range(n):
        gain = np.where(left, u * nearest, -np.inf)
        best = gain.max()
        # Ties (often zeros): the more uncertain case first, then the lower index.
        tied = np.flatnonzero(np.isclose(gain, best, rtol=0.0, atol=1e-12) & left)
        i = int(tied[np.argmax(u[tied])])
        order.append((i, float(max(best, 0.0))))
        left[i] = False
        nearest = np.minimum(nearest, np.clip(1.0 - e @ e[i], 0.0, 2.0))
    return order
