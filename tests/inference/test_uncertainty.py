"""Uncertainty maps and scores: closed-form values, the k-center order, and the map's geometry on real files."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medcl.inference.outputs import write_labels, write_map
from medcl.inference.predictor import Predictor
from medcl.inference.uncertainty import (
    dice_agreement,
    disagreement_map,
    foreground_region,
    greedy_diverse_order,
    normalized_entropy,
    region_mean,
)


def test_normalized_entropy_closed_forms() -> None:
    uniform = torch.full((4, 2, 2, 1), 0.25)
    one_hot = torch.zeros(4, 2, 2, 1)
    one_hot[2] = 1.0
    assert torch.allclose(normalized_entropy(uniform), torch.ones(2, 2, 1))
    assert torch.allclose(normalized_entropy(one_hot), torch.zeros(2, 2, 1), atol=1e-6)
    half = torch.tensor([0.5, 0.5, 0.0]).view(3, 1, 1, 1)
    assert float(normalized_entropy(half)) == pytest.approx(math.log(2) / math.log(3))


def test_dice_agreement_and_disagreement_map() -> None:
    a = torch.zeros(4, 4, 2, dtype=torch.long)
    a[:2] = 1
    assert dice_agreement(a, a, 3) == 1.0  # class 2 absent from both counts as agreement
    b = torch.zeros_like(a)
    b[1:3] = 1  # half of a's foreground
    assert dice_agreement(a, b, 2) == pytest.approx(0.5)
    assert dice_agreement(a, 1 - a, 2) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        dice_agreement(a, a[:2], 2)
    pa = torch.stack([1 - a.float(), a.float()])
    assert torch.equal(disagreement_map(pa, pa), torch.zeros(4, 4, 2))
    assert float(disagreement_map(pa, torch.stack([a.float(), 1 - a.float()])).min()) == 1.0


def test_region_is_the_foreground_and_its_border() -> None:
    labels = torch.zeros(9, 9, 9, dtype=torch.long)
    labels[4, 4, 4] = 2
    assert int(foreground_region(labels, 0).sum()) == 1
    assert int(foreground_region(labels, 1).sum()) == 27
    values = torch.zeros(9, 9, 9)
    values[4, 4, 4] = 27.0
    assert region_mean(values, foreground_region(labels, 1)) == pytest.approx(1.0)
    # No foreground: the whole volume.
    assert region_mean(values, foreground_region(torch.zeros_like(labels), 1)) == pytest.approx(27 / 729)


def test_k_center_skips_a_duplicate_and_keeps_away_from_labeled() -> None:
    u = np.array([0.9, 0.9, 0.5, 0.1])
    e = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])  # case 1 copies case 0
    order = greedy_diverse_order(u, e)
    assert [i for i, _ in order][:2] == [0, 2]
    assert order[-1] == (1, 0.0)  # the copy comes last with gain 0
    # Case 0's embedding already labeled: its copy and itself have nothing to add.
    order = greedy_diverse_order(u, e, labeled=e[:1])
    assert order[0][0] == 2 and {i for i, _ in order[-2:]} == {0, 1}
    with pytest.raises(ValueError, match="non-negative"):
        greedy_diverse_order(-u, e)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        greedy_diverse_order(u, e[:2])


def reoriented(src: Path, dst: Path, spacing=(1.0, 1.0, 2.5)) -> Path:
    """The same voxels stored LPS with another spacing and origin (a new, valid geometry)."""
    img = nib.load(src)
    data = np.asanyarray(img.dataobj)[::-1, ::-1, :]
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [30.0, 40.0, -5.0]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), dst)
    return dst


@pytest.mark.parametrize("tta, spacing", [(False, "[0.75, 0.75, 1.0]"), (True, "null")])
def test_uncertainty_map_has_the_mask_geometry(
    hippocampus: Path, tmp_path: Path, tiny_checkpoint, tta: bool, spacing: str
) -> None:
    """Through orientation (and a resampling to 0.75 mm), the map comes back on the input's own grid."""
    ckpt = tiny_checkpoint(tmp_path / "m.pt", extra=[f"data.spacing={spacing}"])
    predictor = Predictor.load(str(ckpt), device="cpu", precision="fp32")
    src = reoriented(hippocampus / "imagesTr" / "hippocampus_001.nii.gz", tmp_path / "lps.nii.gz")
    seg = predictor.segment([src], uncertainty=True, tta=tta)
    ref = nib.load(src)
    assert seg.uncertainty.shape == seg.labels.shape == ref.shape
    assert seg.uncertainty.dtype == np.float32
    assert float(seg.uncertainty.min()) >= 0.0
    assert float(seg.uncertainty.max()) <= (0.25 if tta else 1.0) + 1e-5
    if not tta:
        assert float(seg.uncertainty.max()) > 0.0
    mask = write_labels(seg.labels, src, tmp_path / "out" / "lps.nii.gz")
    unc = write_map(seg.uncertainty, src, tmp_path / "out" / "lps_uncertainty.nii.gz")
    m, u = nib.load(mask), nib.load(unc)
    assert u.shape == m.shape and u.get_data_dtype() == np.float32
    np.testing.assert_allclose(u.affine, m.affine)
    np.testing.assert_allclose(u.affine, ref.affine)
    np.testing.assert_allclose(np.asanyarray(u.dataobj), seg.uncertainty)
