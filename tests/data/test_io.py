"""Reading NRRD, MetaImage and DICOM through SimpleITK: the same arrays and RAS affines as nibabel on NIfTI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import LoadImage

from medcl.config import DataConfig
from medcl.data.dataset import Case, load_dataset
from medcl.data.io import SimpleITKReader, read_sitk, sitk_affine, sitk_to_array
from medcl.data.sampling import preprocess_volumes
from medcl.data.transforms import volume_transforms

CASE = "hippocampus_001"


def test_sitk_geometry_by_hand() -> None:
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))  # (z, y, x)
    image.SetSpacing((0.5, 2.0, 3.0))
    image.SetOrigin((10.0, 20.0, 30.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))  # LPS: i along -y, j along +x
    # RAS = diag(-1, -1, 1) @ (direction * spacing | origin)
    want = [[0.0, -2.0, 0.0, -10.0], [0.5, 0.0, 0.0, -20.0], [0.0, 0.0, 3.0, 30.0], [0.0, 0.0, 0.0, 1.0]]
    np.testing.assert_allclose(sitk_affine(image), want)
    array = sitk_to_array(image)
    assert array.shape == (4, 3, 2) and array[3, 2, 1] == 23  # indexed (x, y, z)


def test_nrrd_of_a_real_case_reads_like_the_nifti(hippocampus: Path, tmp_path: Path) -> None:
    """A Hippocampus case given an oblique, anisotropic affine, written as NRRD by SimpleITK."""
    src = nib.load(hippocampus / "imagesTr" / f"{CASE}.nii.gz")
    angle = np.deg2rad(20)
    rotate = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotate @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = [-30.0, 12.5, 7.0]
    nifti = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), affine), nifti)
    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(tmp_path / "oblique.nrrd"))

    ours = LoadImage(image_only=True, reader=SimpleITKReader())(tmp_path / "oblique.nrrd")
    theirs = LoadImage(image_only=True, reader="NibabelReader")(nifti)
    assert ours.shape == theirs.shape == src.shape
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    np.testing.assert_allclose(ours.affine.numpy(), affine, atol=1e-5)
    np.testing.assert_allclose(ours.affine.numpy(), theirs.affine.numpy(), atol=1e-5)
    assert ours.meta["space"] == "RAS" and np.isnan(ours.meta["original_channel_dim"])
    np.testing.assert_allclose(ours.meta["pixdim"], [1.0, 0.8, 1.2, 2.5], atol=1e-6)


def test_simpleitk_formats_load_like_nifti(hippocampus: Path, tmp_path: Path) -> None:
    info = load_dataset(hippocampus)
    case = info.cases[0]
    for ext in (".mha", ".nrrd"):
        img = sitk.ReadImage(str(case.images[0]))
        lab = sitk.ReadImage(str(case.label))
        sitk.WriteImage(img, str(tmp_path / f"img{ext}"))
        sitk.WriteImage(lab, str(tmp_path / f"lab{ext}"))
        other = Case(case.id, (tmp_path / f"img{ext}",), tmp_path / f"lab{ext}")
        t = volume_transforms(DataConfig(), "mri", with_label=True)
        a = preprocess_volumes([case], t, with_label=True, cache="none", progress=False)[0]
        b = preprocess_volumes([other], t, with_label=True, cache="none", progress=False)[0]
        torch.testing.assert_close(a["image"].as_tensor(), b["image"].as_tensor())
        torch.testing.assert_close(a["label"].as_tensor(), b["label"].as_tensor())
        np.testing.assert_allclose(a["image"].affine.numpy(), b["image"].affine.numpy(), atol=1e-5)


def test_suffixes_and_a_folder_without_a_series(tmp_path: Path) -> None:
    reader = SimpleITKReader()
    assert reader.verify_suffix("case.NRRD") and reader.verify_suffix(["a.mha", "b.mhd", "c.dcm"])
    assert reader.verify_suffix(tmp_path)  # a folder: a DICOM series
    assert not reader.verify_suffix("case.nii.gz") and not reader.verify_suffix(["a.mha", "b.nii"])
    with pytest.raises(OSError, match=f"no DICOM series found in folder {tmp_path}"):
        read_sitk(tmp_path)
