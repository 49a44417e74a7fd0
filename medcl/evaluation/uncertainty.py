"""Does the uncertainty map point at the errors? Voxel and case level scores for ``medcl evaluate --uncertainty``.

Two questions, two numbers:

* **Voxel level:** inside the region where errors can be (the predicted foreground grown by 3 voxels, as
  ``medcl suggest``'s ``entropy`` scores it, plus the reference foreground, so missed structures count), the
  AUROC of the uncertainty for telling wrong voxels (prediction != reference) from right ones. 0.5 is chance,
  1 is a map that is higher on every error than on every correct voxel. Undefined (None) when the region
  holds no error or no correct voxel.
* **Case level:** over the scored cases, the Spearman rank correlation between a case's mean uncertainty in
  its predicted foreground region (the ``entropy`` score of ``suggest``) and its error, 1 - mean foreground
  Dice. Positive: the cases the model is unsure of are the ones it gets wrong, so ranking by uncertainty
  sends the annotator to them. (``suggest`` scores on the network's grid, this on the input's grid after
  inversion: the same score up to resampling.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr

from medcl.inference.uncertainty import foreground_region, region_mean


@dataclass(frozen=True)
class CaseUncertainty:
    """The uncertainty of one scored case.

    Attributes:
        mean: Mean uncertainty in the predicted foreground grown by 3 voxels (over the whole volume when
            nothing is predicted), as ``suggest --strategy entropy`` scores a case.
        error_auroc: AUROC of the uncertainty for wrong vs right voxels (see the module docstring), or None.
        n_errors: Wrong voxels in the region.
    """

    mean: float
    error_auroc: float | None
    n_errors: int


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positive`` (Mann-Whitney U with tied ranks averaged).

    Args:
        scores: Scores, any shape.
        positive: Booleans of the same shape.

    Returns:
        In [0, 1]; None when there is no positive or no negative.
    """
    scores, positive = np.ravel(scores), np.ravel(positive).astype(bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)  # average ranks for ties: a constant map scores 0.5
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def case_uncertainty(uncertainty: np.ndarray, pred: np.ndarray, ref: np.ndarray) -> CaseUncertainty:
    """Score one case's uncertainty map against its errors.

    Args:
        uncertainty: Per-voxel uncertainty on the prediction's grid. Shape: ``(X, Y, Z)``.
        pred: Predicted label map, same shape.
        ref: Reference label map, same shape.

    Raises:
        ValueError: The shapes differ.
    """
    if not (uncertainty.shape == pred.shape == ref.shape):
        raise ValueError(
            f"uncertainty {uncertainty.shape}, prediction {pred.shape} and reference {ref.shape} must have "
            "one shape"
        )
    predicted = foreground_region(torch.from_numpy(np.asarray(pred, dtype=np.int64))).numpy()
    mean = region_mean(torch.from_numpy(np.asarray(uncertainty)), torch.from_numpy(predicted))
    region = predicted | (ref > 0)
    wrong = (pred != ref)[region]
    return CaseUncertainty(mean, auroc(uncertainty[region], wrong), int(wrong.sum()))


def case_error_spearman(means: Sequence[float], dice: Sequence[float]) -> float | None:
    """Spearman correlation of cases' mean uncertainty with their error (1 - Dice); None under 3 cases or
    when either side is constant."""
    if len(means) < 3 or len(set(means)) < 2 or len(set(dice)) < 2:
        return None
    rho = spearmanr(means, [1.0 - d for d in dice]).statistic
    return None if not math.isfinite(rho) else float(rho)
