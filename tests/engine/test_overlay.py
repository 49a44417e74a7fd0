"""Validation overlay pictures."""

from __future__ import annotations

import numpy as np

from medcl.engine.trainer import overlay


def test_overlay_is_three_enlarged_rgb_panels() -> None:
    image = np.random.default_rng(0).normal(size=(36, 48))
    label = np.zeros((36, 48), dtype=np.int64)
    label[10:20, 10:20] = 1
    pred = np.zeros_like(label)
    pic = overlay(image, label, pred)
    assert pic.dtype == np.uint8 and pic.ndim == 3 and pic.shape[2] == 3
    zoom = 192 // 48  # the smaller side of the rotated picture
    assert pic.shape[:2] == (48 * zoom, 3 * 36 * zoom)  # rot90 puts the first axis horizontally
    gt_panel = pic[:, 36 * zoom : 72 * zoom]
    pred_panel = pic[:, 72 * zoom :]
    assert (gt_panel[..., 0].astype(int) - gt_panel[..., 2]).max() > 50  # the labeled square is tinted
    assert np.abs(pred_panel[..., 0].astype(int) - pred_panel[..., 1]).max() == 0  # empty prediction: gray
