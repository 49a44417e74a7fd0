"""Validation metrics on hand-built volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcl.evaluation.metrics import case_metrics


def cube(shape, lo, hi, value=1):
    a = torch.zeros(shape, dtype=torch.long)
    a[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = value
    return a


def test_dice_of_overlapping_cubes_is_hand_computed() -> None:
    gt = cube((20, 20, 20), (0, 0, 0), (10, 10, 10))  # 1000 voxels
    pred = cube((20, 20, 20), (5, 0, 0), (15, 10, 10))  # 1000 voxels, 500 shared
    m = case_metrics(pred, gt, num_classes=2, spacing=(1, 1, 1))
    assert m["dice"][0] == pytest.approx(2 * 500 / 2000)


def test_hd95_uses_spacing() -> None:
    gt = cube((30, 30, 30), (5, 5, 5), (15, 15, 15))
    pred = cube((30, 30, 30), (6, 5, 5), (16, 15, 15))  # shifted one voxel along x
    assert case_metrics(pred, gt, 2, spacing=(1, 1, 1))["hd95"][0] == pytest.approx(1.0)
    assert case_metrics(pred, gt, 2, spacing=(2, 1, 1))["hd95"][0] == pytest.approx(2.0)


def test_empty_policy() -> None:
    gt = cube((10, 10, 10), (2, 2, 2), (5, 5, 5), value=1)
    pred = torch.zeros_like(gt)
    m = case_metrics(pred, gt, num_classes=3, spacing=None)
    # class 1: missed entirely -> Dice 0, HD95 undefined; class 2: absent from both -> Dice 1, HD95 0.
    assert m["dice"].tolist() == [0.0, 1.0]
    assert np.isnan(m["hd95"][0]) and m["hd95"][1] == 0.0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="differs"):
        case_metrics(torch.zeros(4, 4, 4), torch.zeros(4, 4, 5), 2)
