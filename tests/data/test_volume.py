"""Tests for medcl.data.volume: NRRD, MetaImage and NIfTI read alike; unreadable files are named."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medcl.data.volume import label_values, read_volume, squeeze_to_3d
from medcl.errors import DataError


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine.copy()


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".nii"])
def test_read_volume_other_formats_match_nifti(hippo: Path, tmp_path: Path, ext: str):
    original = hippo / "imagesTr" / "hippocampus_001.nii.gz"
    # Give the volume a non-trivial geometry so that the LPS -> RAS conversion is exercised.
    array, _ = load(original)
    affine = np.array([[-0.9, 0, 0, 10.0], [0, 1.1, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
    source = tmp_path / "source.nii.gz"
    save(source, array, affine)
    copy = tmp_path / f"copy{ext}"
    sitk.WriteImage(sitk.ReadImage(str(source)), str(copy))
    got_array, got_affine = read_volume(copy)
    ref_array, ref_affine = read_volume(source)
    assert got_array.shape == ref_array.shape == (35, 51, 35)
    np.testing.assert_array_equal(got_array, ref_array)
    np.testing.assert_allclose(got_affine, ref_affine, atol=1e-5)
    np.testing.assert_allclose(ref_affine, affine, atol=1e-5)


def test_read_volume_errors_name_the_file(tmp_path: Path, hippo: Path):
    with pytest.raises(DataError, match=r"Image file .*none\.nii\.gz does not exist"):
        read_volume(tmp_path / "none.nii.gz")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match=r"Cannot read .*garbage\.nii\.gz: "):
        read_volume(garbage)
    bad_mha = tmp_path / "bad.mha"
    bad_mha.write_text("ObjectType = Image\nNDims = 3\n")
    with pytest.raises(DataError, match=r"Cannot read .*bad\.mha: .*\(RuntimeError\)"):
        read_volume(bad_mha)
    nrrd = tmp_path / "cut.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(hippo / "imagesTr" / "hippocampus_004.nii.gz")), str(nrrd))
    nrrd.write_bytes(nrrd.read_bytes()[:-1000])
    with pytest.raises(
        DataError, match=r"Cannot read .*cut\.nrrd: .*Error reading .*cut\.nrrd.*\(RuntimeError\)"
    ):
        read_volume(nrrd)


def test_squeeze_to_3d_drops_only_trailing_singleton_axes() -> None:
    assert squeeze_to_3d(np.zeros((4, 5, 6, 1, 1))).shape == (4, 5, 6)
    assert squeeze_to_3d(np.zeros((4, 5, 6, 2))).shape == (4, 5, 6, 2)  # a real 4th axis stays
    assert squeeze_to_3d(np.zeros((1, 5, 6))).shape == (1, 5, 6)  # never below 3 axes


def test_label_values_agree_with_unique_on_both_paths() -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 4, size=(6, 7, 8)).astype(np.uint8)  # bincount path
    wide = np.array([[-3, 0], [70000, 0]], dtype=np.int64)  # negative and large: unique path
    assert label_values(small) == np.unique(small).tolist()
    assert label_values(wide) == [-3, 0, 70000]
    assert label_values(np.array([[True, False]])) == [0, 1]
    assert label_values(np.zeros((0, 3), dtype=np.uint8)) == []
