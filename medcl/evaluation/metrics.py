"""Per-case, per-class segmentation metrics on whole 3D volumes: Dice, HD95 and ASD (MONAI, distances in mm).

Two functions serve two callers:

* :func:`case_metrics` is what validation during training uses (torch tensors, one-hot, Dice and HD95);
* :func:`binary_metrics` / :func:`label_metrics` are what ``medcl evaluate`` uses (numpy label maps, Dice,
  HD95 and ASD, voxel counts, a choice of empty-mask policy).

Distances come from MONAI: ``compute_hausdorff_distance(percentile=95)`` is the larger of the two directed
95th percentiles of surface-to-surface distances, ``compute_average_surface_distance(symmetric=True)`` the
mean of both directed distance sets pooled together; surfaces are the mask voxels with a face neighbour
outside the mask. ``spacing`` turns voxel steps into mm; ``None`` measures in voxels.

Empty-mask policies (:data:`EmptyPolicy`), for one class of one case:

========================  ==========================  ==========================
GT / prediction           ``strict`` (default)        ``ssl4mis``
========================  ==========================  ==========================
both have foreground      Dice, HD95, ASD             Dice, HD95, ASD
GT empty, pred empty      Dice 1, HD95 0, ASD 0       Dice 0, HD95 0, ASD 0
GT empty, pred not        Dice 0, HD95/ASD NaN        Dice 1, HD95 0, ASD 0
GT not, pred empty        Dice 0, HD95/ASD NaN        Dice 0, HD95 0, ASD 0
========================  ==========================  ==========================

``strict`` is what :func:`case_metrics` (validation) does: nothing to find and nothing found is perfect, one
side empty is a complete miss whose distances are undefined (NaN; summaries exclude them from distance means
and count them as ``n_undefined``). ``ssl4mis`` reproduces the empty-mask branches of
``calculate_metric_percase`` in SSL4MIS's ``val_2D.py`` [0]: ``(dice, hd95)`` if ``pred.sum() > 0 and
gt.sum() > 0``, ``(1, 0)`` if ``pred.sum() > 0 and gt.sum() == 0``, else ``(0, 0)``; ASD takes HD95's value in
the special cases. Use it only to compare with numbers published from that code: it **rewards false
positives** on an empty ground truth (Dice 1) and scores a complete miss as **HD95 0**, the best possible
distance, so it flatters HD95 means. Only the empty-mask branches are reproduced: SSL4MIS measures in voxels
(use ``spacing=None``, ``--spacing voxel``) and takes medpy's HD95, the 95th percentile of both directed
distance sets pooled, which can differ slightly from MONAI's larger-of-two-percentiles on asymmetric errors.

[0] Luo, SSL4MIS, https://github.com/HiLab-git/SSL4MIS (``code/val_2D.py``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot

EmptyPolicy = Literal["strict", "ssl4mis"]
EMPTY_POLICIES: tuple[str, ...] = get_args(EmptyPolicy)


def case_metrics(
    pred: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    *,
    hd95: bool = True,
) -> dict[str, np.ndarray]:
    """Dice and HD95 of each foreground class for one volume.

    Args:
        pred: predicted label map, shape ``(X, Y, Z)`` or ``(1, X, Y, Z)``, integer classes.
        label: ground-truth label map of the same shape.
        num_classes: number of classes including background.
        spacing: voxel size in mm per spatial axis; ``None`` gives distances in voxels.
        hd95: also compute the 95th-percentile Hausdorff distance.

    Returns:
        ``{"dice": (K-1,), "hd95": (K-1,)}`` arrays for classes ``1..K-1`` (HD95 omitted if not asked).
    """
    if pred.shape != label.shape:
        raise ValueError(
            f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}"
        )
    p = pred.reshape(1, 1, *pred.shape[-3:]).long()
    g = label.reshape(1, 1, *label.shape[-3:]).long()
    p1 = one_hot(p, num_classes)[:, 1:]  # (1, K-1, X, Y, Z)
    g1 = one_hot(g, num_classes)[:, 1:]
    p_any = p1.flatten(2).any(-1)[0].cpu().numpy()  # (K-1,)
    g_any = g1.flatten(2).any(-1)[0].cpu().numpy()
    dice = compute_dice(p1, g1, include_background=True, ignore_empty=False)[0].cpu().numpy()
    dice = np.where(~p_any & ~g_any, 1.0, dice)
    out = {"dice": dice.astype(np.float64)}
    if hd95:
        both = p_any & g_any
        dist = np.full(num_classes - 1, np.nan)
        if both.any():
            idx = np.flatnonzero(both)
            with _quiet_monai():
                values = (
                    compute_hausdorff_distance(
                        p1[:, idx],
                        g1[:, idx],
                        include_background=True,
                        percentile=95,
                        spacing=list(spacing) if spacing else None,
                    )[0]
                    .cpu()
                    .numpy()
                )
            dist[idx] = values
        dist[~p_any & ~g_any] = 0.0
        out["hd95"] = dist
    return out


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one foreground class in one case.

    Attributes:
        dice: Dice coefficient in [0, 1].
        hd95: 95th-percentile symmetric Hausdorff distance (mm, or voxels without spacing); NaN if undefined.
        asd: Average symmetric surface distance, same unit; NaN exactly when ``hd95`` is.
        n_pred: Voxels of the class in the prediction.
        n_ref: Voxels of the class in the reference (ground truth).
    """

    dice: float
    hd95: float
    asd: float
    n_pred: int
    n_ref: int


def check_empty_policy(policy: str) -> EmptyPolicy:
    """Return ``policy`` if it is one of :data:`EMPTY_POLICIES`.

    Raises:
        ValueError: Naming the value and the allowed ones.
    """
    if policy not in EMPTY_POLICIES:
        raise ValueError(f"empty_policy must be one of {', '.join(EMPTY_POLICIES)}; got {policy!r}.")
    return policy  # type: ignore[return-value]


def binary_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    empty_policy: EmptyPolicy = "strict",
) -> ClassMetrics:
    """Dice, HD95 and ASD of one binary mask against a reference mask.

    Dice = 2|P ∩ G| / (|P| + |G|) (MONAI ``compute_dice``); HD95 and ASD are computed with MONAI on the mask
    surfaces (see the module docstring) when both masks have foreground, otherwise set by ``empty_policy``.

    Args:
        pred: Predicted mask, any shape; non-zero is foreground.
        ref: Reference mask of the same shape.
        spacing: Voxel size per axis in mm (``len == pred.ndim``); ``None`` measures in voxels.
        empty_policy: ``"strict"`` or ``"ssl4mis"``, see the module docstring.

    Returns:
        The class metrics; distances in the unit of ``spacing``.

    Raises:
        ValueError: Shapes differ, ``spacing`` has the wrong length or a non-positive value, or the policy is
            unknown.

    Example:
        >>> gt = np.zeros((8, 8, 8), bool); gt[2:6, 2:6, 2:6] = True
        >>> binary_metrics(gt, gt, (1.0, 1.0, 3.0)).dice
        1.0
    """
    check_empty_policy(empty_policy)
    pred, ref = np.asarray(pred) != 0, np.asarray(ref) != 0
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if spacing is not None:
        spacing = [float(s) for s in spacing]
        if len(spacing) != pred.ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be {pred.ndim} positive numbers, got {spacing}")
    n_pred, n_ref = int(pred.sum()), int(ref.sum())

    if n_pred == 0 or n_ref == 0:
        if empty_policy == "ssl4mis":
            dice = 1.0 if n_pred > 0 else 0.0  # SSL4MIS: (1, 0) for pred > 0 and gt == 0, else (0, 0)
            return ClassMetrics(dice=dice, hd95=0.0, asd=0.0, n_pred=n_pred, n_ref=n_ref)
        if n_pred == 0 and n_ref == 0:
            return ClassMetrics(dice=1.0, hd95=0.0, asd=0.0, n_pred=0, n_ref=0)
        return ClassMetrics(dice=0.0, hd95=float("nan"), asd=float("nan"), n_pred=n_pred, n_ref=n_ref)

    # Every metric is unchanged by cropping both masks to the bounding box of their union (surfaces at the
    # box border stay surfaces: MONAI pads with background), and large volumes get cheap.
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(*_bounding_box(pred | ref), strict=True))
    p = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]  # (1, 1, *spatial): batch, channel
    g = torch.from_numpy(np.ascontiguousarray(ref[box]))[None, None]
    with _quiet_monai():
        dice = compute_dice(p.float(), g.float(), include_background=True, ignore_empty=False)
        hd95 = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)
        asd = compute_average_surface_distance(p, g, include_background=True, symmetric=True, spacing=spacing)
    return ClassMetrics(
        dice=_float32_digits(dice.item()),
        hd95=_float32_digits(hd95.item()),
        asd=_float32_digits(asd.item()),
        n_pred=n_pred,
        n_ref=n_ref,
    )


def label_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    classes: Sequence[int],
    spacing: Sequence[float] | None = None,
    *,
    empty_policy: EmptyPolicy = "strict",
) -> dict[int, ClassMetrics]:
    """:func:`binary_metrics` of each class value of two integer label maps.

    Args:
        pred: Predicted label map, shape ``(X, Y, Z)``, integer class values.
        ref: Reference label map of the same shape.
        classes: The class values to score (the foreground values; 0 is normally left out).
        spacing: Voxel size per axis in mm; ``None`` measures in voxels.
        empty_policy: ``"strict"`` or ``"ssl4mis"``, see the module docstring.

    Returns:
        Class value -> its metrics, in the order of ``classes``.

    Raises:
        ValueError: As :func:`binary_metrics`.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return {int(c): binary_metrics(pred == c, ref == c, spacing, empty_policy=empty_policy) for c in classes}


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of the non-zero voxels along each axis (the mask must not be empty)."""
    coords = [
        np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        for axis in range(mask.ndim)
    ]
    return np.array([c[0] for c in coords]), np.array([c[-1] for c in coords])


def _float32_digits(value: float) -> float:
    """MONAI returns float32; keep the digits float32 carries (0.7510917, not 0.751091718673706)."""
    return float(str(np.float32(value)))


@contextlib.contextmanager
def _quiet_monai() -> Iterator[None]:
    """Hide the FutureWarning MONAI 1.5+ raises about its own internal use of ``always_return_as_numpy``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        yield
