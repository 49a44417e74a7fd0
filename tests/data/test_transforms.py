"""Preprocessing pipelines on real Hippocampus volumes: MRI z-score, CT window, orientation, augmentation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medcl.config import AugmentConfig, DataConfig
from medcl.data.transforms import (
    BatchAffine,
    batch_transforms,
    resolve_modality,
    sample_transforms,
    volume_transforms,
)

CASE = "hippocampus_001"


def case_files(hippocampus: Path) -> dict[str, str]:
    return {
        "image": str(hippocampus / "imagesTr" / f"{CASE}.nii.gz"),
        "label": str(hippocampus / "labelsTr" / f"{CASE}.nii.gz"),
    }


def raw_image(hippocampus: Path) -> np.ndarray:
    return np.asarray(nib.load(hippocampus / "imagesTr" / f"{CASE}.nii.gz").dataobj).astype(np.float64)


def test_mri_normalisation_and_geometry(hippocampus: Path) -> None:
    vol = volume_transforms(DataConfig(), "mri", with_label=True)(case_files(hippocampus))
    image, label = vol["image"], vol["label"]
    assert image.shape[0] == 1 and label.shape == image.shape
    assert image.dtype == torch.float32 and label.dtype == torch.int64
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-2
    assert set(torch.unique(label).tolist()) == {0, 1, 2}
    raw = nib.load(hippocampus / "labelsTr" / f"{CASE}.nii.gz")
    assert nib.aff2axcodes(raw.affine) == ("R", "A", "S")  # identity affine: RAS already
    np.testing.assert_array_equal(label[0].numpy(), np.asanyarray(raw.dataobj).astype(np.int64))


def test_mri_is_clipped_to_its_percentiles_then_z_scored(hippocampus: Path) -> None:
    raw = raw_image(hippocampus)
    lo, hi = np.percentile(raw, [0.5, 99.5])
    clipped = np.clip(raw, lo, hi)
    want = (clipped - clipped.mean()) / clipped.std()  # population std, over the whole volume
    got = volume_transforms(DataConfig(), "mri", with_label=False)(case_files(hippocampus))["image"]
    np.testing.assert_allclose(got[0].numpy(), want, atol=1e-5)
    assert float(got.min()) == pytest.approx(want.min(), abs=1e-5)
    assert float(got.max()) == pytest.approx(want.max(), abs=1e-5)


def test_ct_window_maps_to_unit_range(hippocampus: Path) -> None:
    raw = raw_image(hippocampus)  # intensities 2..139: some below 50, some above 100
    cfg = DataConfig(ct_window=(50.0, 100.0))
    case = {"image": case_files(hippocampus)["image"]}
    image = volume_transforms(cfg, "ct", with_label=False)(case)["image"]
    np.testing.assert_allclose(image[0].numpy(), np.clip((raw - 50.0) / 50.0, 0.0, 1.0), atol=1e-6)
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0


def test_orientation_brings_a_flipped_copy_back_to_ras(hippocampus: Path, tmp_path: Path) -> None:
    src = nib.load(hippocampus / "imagesTr" / f"{CASE}.nii.gz")
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # the same voxels, stored as LPS
    flip[:2, 3] = np.array(src.shape[:2]) - 1
    lps = nib.Nifti1Image(np.asarray(src.dataobj)[::-1, ::-1, :].copy(), src.affine @ flip)
    nib.save(lps, tmp_path / "lps.nii.gz")
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")
    t = volume_transforms(DataConfig(), "mri", with_label=False)
    a = t({"image": case_files(hippocampus)["image"]})["image"]
    b = t({"image": str(tmp_path / "lps.nii.gz")})["image"]
    torch.testing.assert_close(b.as_tensor(), a.as_tensor())
    np.testing.assert_allclose(b.affine.numpy(), a.affine.numpy(), atol=1e-6)
    kept = volume_transforms(DataConfig(orientation=None), "mri", with_label=False)
    assert not torch.equal(kept({"image": str(tmp_path / "lps.nii.gz")})["image"], a)


def test_spacing_resamples_image_bilinear_and_label_nearest(hippocampus: Path) -> None:
    cfg = DataConfig(spacing=[2.0, 2.0, 2.0])
    vol = volume_transforms(cfg, "mri", with_label=True)(case_files(hippocampus))
    assert vol["image"].shape == (1, 18, 26, 18)  # 35 x 51 x 35 voxels of 1 mm
    assert vol["label"].shape == vol["image"].shape and vol["label"].dtype == torch.int64
    assert set(torch.unique(vol["label"]).tolist()) == {0, 1, 2}  # no blended class values
    np.testing.assert_allclose(np.diag(vol["image"].affine.numpy())[:3], [2.0, 2.0, 2.0])


def test_modality_comes_from_the_dataset_unless_the_config_says() -> None:
    assert resolve_modality(DataConfig(), "ct") == "ct"
    assert resolve_modality(DataConfig(modality="mri"), "ct") == "mri"


def test_sample_transforms_pad_and_crop_to_the_patch() -> None:
    sample = {"image": torch.rand(1, 40, 30), "label": torch.randint(0, 3, (1, 40, 30))}
    out = sample_transforms(AugmentConfig(), [32, 32], with_label=True)(sample)
    assert out["image"].shape == (1, 32, 32) and out["label"].shape == (1, 32, 32)
    plain = sample_transforms(None, [64, 64], with_label=False)({"image": torch.ones(1, 40, 30)})
    assert plain["image"].shape == (1, 64, 64) and float(plain["image"].sum()) == 40 * 30  # zero padding


def test_batch_transforms_only_when_rotation_or_zoom_is_on() -> None:
    assert batch_transforms(None) is None
    assert batch_transforms(AugmentConfig(rotate_deg=0, scale=0)) is None
    affine = batch_transforms(AugmentConfig(rotate_deg=90, scale=0))
    assert isinstance(affine, BatchAffine) and affine.rotate == pytest.approx(np.pi / 2)


def test_batch_affine_rotates_each_sample_and_keeps_labels() -> None:
    torch.manual_seed(0)
    image = torch.rand(3, 1, 9, 9)
    label = torch.randint(0, 3, (3, 1, 9, 9))
    turn = BatchAffine(rotate_deg=90, scale=0.0, prob=1.0)
    # Force exact quarter turns (either direction) so the result can be compared with rot90.
    turn.theta = lambda n, dims, rng: torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]] * n)
    out = turn({"image": image, "label": label}, np.random.default_rng(0))
    for i in range(3):
        candidates = [torch.rot90(image[i], k, dims=(1, 2)) for k in (1, -1)]
        assert any(torch.allclose(out["image"][i], c, atol=1e-5) for c in candidates)
        labels = [torch.rot90(label[i], k, dims=(1, 2)) for k in (1, -1)]
        assert any(torch.equal(out["label"][i], c) for c in labels)
    # prob 0 is the identity; the same generator state gives the same warp.
    still = BatchAffine(30, 0.2, prob=0.0)({"image": image, "label": label}, np.random.default_rng(1))
    torch.testing.assert_close(still["image"], image, atol=1e-5, rtol=0)
    a = BatchAffine(30, 0.2)({"image": image}, np.random.default_rng(5))["image"]
    b = BatchAffine(30, 0.2)({"image": image}, np.random.default_rng(5))["image"]
    torch.testing.assert_close(a, b)
