"""Per-case, per-class segmentation metrics on whole 3D volumes (MONAI metrics, distances in mm).

Policy for empty masks (validation; ``medcl evaluate`` exposes a choice):

* ground truth and prediction both empty for a class: Dice 1, HD95 0 (nothing to find, nothing found);
* exactly one of them empty: Dice 0, HD95 NaN (undefined; excluded from means, counted separately).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot


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
