"""Metrics on hand-built volumes (validation and ``medcl evaluate``) and against scipy on real labels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from medcl.evaluation.metrics import binary_metrics, case_metrics, label_metrics


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


# --- binary_metrics / label_metrics (``medcl evaluate``) ---------------------------------------------------

SHAPE = (24, 24, 24)


def box(lo, hi, shape=SHAPE) -> np.ndarray:
    a = np.zeros(shape, dtype=bool)
    a[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return a


# (prediction, reference, Dice): cubes whose overlaps are counted by hand.
DICE_CASES = [
    (box((2, 2, 2), (12, 12, 12)), box((2, 2, 2), (12, 12, 12)), 1.0),  # identical
    (box((2, 2, 2), (12, 12, 12)), box((7, 2, 2), (17, 12, 12)), 2 * 500 / 2000),  # half overlap
    (box((2, 2, 2), (6, 6, 6)), box((10, 10, 10), (14, 14, 14)), 0.0),  # disjoint
    (box((4, 4, 4), (6, 6, 6)), box((2, 2, 2), (8, 8, 8)), 2 * 8 / (8 + 216)),  # 2^3 inside 6^3
]


@pytest.mark.parametrize(("pred", "ref", "dice"), DICE_CASES)
def test_dice_of_cubes(pred, ref, dice) -> None:
    m = binary_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m.dice == pytest.approx(dice, abs=1e-6)
    assert (m.n_pred, m.n_ref) == (int(pred.sum()), int(ref.sum()))


def plate(z: int, x0: int = 5) -> np.ndarray:
    """A 10 x 10 x 1 plate: every voxel is a surface voxel, so surface distances are exact."""
    return box((x0, 5, z), (x0 + 10, 15, z + 1))


def test_plate_shifted_along_anisotropic_axis() -> None:
    # Each predicted voxel sits one voxel above its reference twin; along z one voxel is 3 mm.
    pred, ref = plate(z=6), plate(z=5)
    mm = binary_metrics(pred, ref, (1.0, 1.0, 3.0))
    assert (mm.dice, mm.hd95, mm.asd) == pytest.approx((0.0, 3.0, 3.0))
    vox = binary_metrics(pred, ref, None)
    assert (vox.hd95, vox.asd) == pytest.approx((1.0, 1.0))


def test_plate_shifted_in_plane() -> None:
    # Shift by one voxel along x (1 mm): 90 of 100 voxels overlap; in each direction 10 of 100 surface
    # voxels are 1 mm away, the rest 0 -> ASD = 20 / 200 = 0.1 mm, both 95th percentiles are 1 mm.
    pred, ref = plate(z=5, x0=6), plate(z=5, x0=5)
    m = binary_metrics(pred, ref, (1.0, 1.0, 3.0))
    assert (m.dice, m.hd95, m.asd) == pytest.approx((0.9, 1.0, 0.1), abs=1e-6)


def test_grown_cube_distances() -> None:
    # Reference 10^3, prediction grown by one voxel on every side (12^3). Prediction surface (728 voxels):
    # 600 face voxels at 1, 120 edge voxels at sqrt 2, 8 corners at sqrt 3 from the reference surface; each
    # of the 488 reference surface voxels is 1 from the prediction surface.
    ref, pred = box((5, 5, 5), (15, 15, 15)), box((4, 4, 4), (16, 16, 16))
    m = binary_metrics(pred, ref)
    asd = (600 + 120 * np.sqrt(2) + 8 * np.sqrt(3) + 488) / (728 + 488)
    assert m.asd == pytest.approx(asd, rel=1e-6)
    assert m.hd95 == pytest.approx(np.sqrt(2), rel=1e-6)  # 95th percentile of 728 falls among the edges
    assert m.dice == pytest.approx(2 * 1000 / (1000 + 1728), rel=1e-6)


def test_distances_are_symmetric_and_crop_invariant() -> None:
    ref, pred = box((0, 3, 0), (9, 12, 24)), box((0, 2, 1), (11, 12, 20))  # touching the volume border
    a = binary_metrics(pred, ref, (0.7, 1.0, 2.5))
    b = binary_metrics(ref, pred, (0.7, 1.0, 2.5))
    c = binary_metrics(np.pad(pred, 3), np.pad(ref, 3), (0.7, 1.0, 2.5))
    assert (a.hd95, a.asd, a.dice) == pytest.approx((b.hd95, b.asd, b.dice))
    assert (a.hd95, a.asd, a.dice) == pytest.approx((c.hd95, c.asd, c.dice))


NONEMPTY = box((2, 2, 2), (6, 6, 6))
EMPTY = np.zeros(SHAPE, dtype=bool)
NAN = float("nan")


@pytest.mark.parametrize(
    ("policy", "pred", "ref", "expected"),
    [
        ("strict", EMPTY, EMPTY, (1.0, 0.0, 0.0)),
        ("strict", NONEMPTY, EMPTY, (0.0, NAN, NAN)),
        ("strict", EMPTY, NONEMPTY, (0.0, NAN, NAN)),
        ("strict", NONEMPTY, NONEMPTY, (1.0, 0.0, 0.0)),
        # SSL4MIS calculate_metric_percase: (1, 0) if pred > 0 and gt == 0, else (0, 0) unless both > 0.
        ("ssl4mis", EMPTY, EMPTY, (0.0, 0.0, 0.0)),
        ("ssl4mis", NONEMPTY, EMPTY, (1.0, 0.0, 0.0)),
        ("ssl4mis", EMPTY, NONEMPTY, (0.0, 0.0, 0.0)),
        ("ssl4mis", NONEMPTY, NONEMPTY, (1.0, 0.0, 0.0)),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_empty_policies(policy, pred, ref, expected) -> None:
    m = binary_metrics(pred, ref, (1.0, 1.0, 3.0), empty_policy=policy)
    np.testing.assert_allclose((m.dice, m.hd95, m.asd), expected, atol=1e-6)


def test_both_policies_agree_when_both_have_foreground() -> None:
    pred, ref = plate(z=6), plate(z=5)
    strict = binary_metrics(pred, ref, (1.0, 1.0, 3.0), empty_policy="strict")
    ssl = binary_metrics(pred, ref, (1.0, 1.0, 3.0), empty_policy="ssl4mis")
    assert strict == ssl


def test_bad_inputs_raise_with_a_sentence() -> None:
    with pytest.raises(ValueError, match="empty_policy must be one of strict, ssl4mis"):
        binary_metrics(EMPTY, EMPTY, empty_policy="nnunet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differs from reference shape"):
        binary_metrics(EMPTY, EMPTY[:-1])
    with pytest.raises(ValueError, match="3 positive numbers"):
        binary_metrics(NONEMPTY, NONEMPTY, (1.0, 0.0, 1.0))


def test_label_metrics_scores_each_class() -> None:
    ref = np.zeros(SHAPE, dtype=np.uint8)
    ref[box((2, 2, 2), (12, 12, 12))] = 1
    ref[box((14, 14, 14), (18, 18, 18))] = 2
    pred = ref.copy()
    pred[pred == 2] = 0  # class 2 missed entirely
    m = label_metrics(pred, ref, [1, 2, 3])
    assert m[1].dice == 1.0 and m[1].hd95 == 0.0 and m[1].asd == 0.0
    assert m[2].dice == 0.0 and np.isnan(m[2].hd95) and (m[2].n_pred, m[2].n_ref) == (0, 64)
    assert (m[3].dice, m[3].hd95, m[3].asd) == (1.0, 0.0, 0.0)  # absent from both


# --- agreement with an independent scipy computation on real Hippocampus labels ---------------------------


def scipy_surface_distances(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[float, float]:
    """HD95 (larger of the two directed 95th percentiles) and ASD (mean of both directions pooled).

    Surfaces are mask voxels with a face neighbour outside; distances from each surface voxel to the other
    surface come from a Euclidean distance transform with the voxel spacing.
    """
    surf_p = pred & ~ndimage.binary_erosion(pred)
    surf_r = ref & ~ndimage.binary_erosion(ref)
    d_pr = ndimage.distance_transform_edt(~surf_r, sampling=spacing)[surf_p]
    d_rp = ndimage.distance_transform_edt(~surf_p, sampling=spacing)[surf_r]
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    return float(hd95), float(np.concatenate([d_pr, d_rp]).mean())


def shifted(mask: np.ndarray, offset: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros_like(mask)
    src = tuple(slice(max(0, -o), mask.shape[i] - max(0, o)) for i, o in enumerate(offset))
    dst = tuple(slice(max(0, o), mask.shape[i] - max(0, -o)) for i, o in enumerate(offset))
    out[dst] = mask[src]
    return out


REAL_PAIRS = [
    ("hippocampus_001", 1, "erode", (1.0, 1.0, 1.0)),
    ("hippocampus_004", 2, "shift", (1.0, 1.0, 1.0)),
    ("hippocampus_006", 1, "shift", (1.0, 1.0, 3.0)),
    ("hippocampus_008", 2, "erode+shift", (0.8, 1.0, 2.5)),
]


@pytest.mark.parametrize(("case", "value", "change", "spacing"), REAL_PAIRS)
def test_distances_agree_with_scipy_on_real_labels(hippocampus, case, value, change, spacing) -> None:
    label = np.asarray(nib.load(hippocampus / "labelsTr" / f"{case}.nii.gz").dataobj)
    ref = label == value
    pred = ref
    if "erode" in change:
        pred = ndimage.binary_erosion(pred)
    if "shift" in change:
        pred = shifted(pred, (1, -2, 1))
    m = binary_metrics(pred, ref, spacing)
    hd95, asd = scipy_surface_distances(pred, ref, spacing)
    assert m.hd95 == pytest.approx(hd95, rel=1e-5)
    assert m.asd == pytest.approx(asd, rel=1e-5)
    assert m.dice == pytest.approx(2 * (pred & ref).sum() / (pred.sum() + ref.sum()), rel=1e-6)
    assert m.hd95 > 0 and m.asd > 0
