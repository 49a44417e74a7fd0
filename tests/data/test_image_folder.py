"""Folders of unlabeled images (no dataset.json): what is found, how cases are named, what fails and how."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medcl.data.check_report import format_report
from medcl.data.dataset import load_dataset
from medcl.data.image_folder import PLACEHOLDER_LABELS, find_images, load_image_folders
from medcl.data.validate import check_dataset
from medcl.errors import DataError


def write_dicom_series(src: Path, folder: Path) -> sitk.Image:
    """Store a real volume as a DICOM series of int16 slices with position/orientation tags."""
    img = sitk.Cast(sitk.RescaleIntensity(sitk.ReadImage(str(src)), 0, 1000), sitk.sitkInt16)
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.7"
    for z in range(img.GetDepth()):
        s = img[:, :, z]
        position = img.TransformIndexToPhysicalPoint((0, 0, z))
        tags = {
            "0008|0060": "MR",
            "0020|000e": uid,
            "0020|000d": uid + ".0",
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(map(str, position)),
            "0020|0037": "\\".join(map(str, img.GetDirection()[0:3] + img.GetDirection()[3:6])),
        }
        for k, v in tags.items():
            s.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"IM{z:04d}.dcm"))
        writer.Execute(s)
        # Scanners often write no extension, or name files by UID: GDCM, not the name, decides what is DICOM.
        if z % 3:
            (folder / f"IM{z:04d}.dcm").rename(folder / (f"IM{z:04d}" if z % 3 == 1 else f"1.2.840.{z}"))
    return img


@pytest.fixture
def scans(hippocampus: Path, tmp_path: Path) -> Path:
    """A scan folder as users have them: nested sites, a DICOM series, notes and hidden files beside."""
    root = tmp_path / "scans"
    src = hippocampus / "imagesTr"
    (root / "site_a").mkdir(parents=True)
    shutil.copy(src / "hippocampus_001.nii.gz", root / "site_a" / "s1.nii.gz")
    shutil.copy(src / "hippocampus_004.nii.gz", root / "top.nii.gz")
    write_dicom_series(src / "hippocampus_006.nii.gz", root / "site_b" / "patient7" / "mr")
    (root / "notes.txt").write_text("acquired 2024\n")
    (root / ".DS_Store").write_bytes(b"\0")
    return root


def test_recursive_search_names_cases_by_relative_path(scans: Path) -> None:
    cases, skipped = find_images(scans)
    assert [c.id for c in cases] == ["site_a/s1", "site_b/patient7/mr", "top"]
    assert all(c.label is None for c in cases)
    assert cases[1].images == (scans / "site_b" / "patient7" / "mr",)  # the series folder is the case
    assert skipped == [scans / "notes.txt"]  # hidden files are ignored, other files listed


def test_image_folders_become_an_unlabeled_dataset(scans: Path, hippocampus: Path, tmp_path: Path) -> None:
    info = load_image_folders([scans], modality="ct")
    assert info.cases == [] and len(info.unlabeled) == 3
    assert info.modality == "ct" and info.labels == PLACEHOLDER_LABELS
    assert info.image_folders == [scans.resolve()] and info.name == "scans"
    assert load_image_folders([scans], modality="mri").modality == "mri"
    # Several folders: ids carry the folder name, so equal file names do not clash.
    other = tmp_path / "more"
    other.mkdir()
    shutil.copy(hippocampus / "imagesTr" / "hippocampus_004.nii.gz", other / "top.nii.gz")
    both = load_image_folders([scans, other], modality="mri")
    assert {c.id for c in both.unlabeled} >= {"scans/top", "more/top", "scans/site_b/patient7/mr"}


def test_every_case_is_read_and_checked_dicom_included(scans: Path, hippocampus: Path) -> None:
    info = load_image_folders([scans])
    reports = check_dataset(info, progress=False)
    assert [r.case for r in reports] == ["site_a/s1", "site_b/patient7/mr", "top"]
    assert not [p for r in reports for p in r.errors]
    original = sitk.ReadImage(str(hippocampus / "imagesTr" / "hippocampus_006.nii.gz"))
    assert reports[1].shape == original.GetSize()  # every slice of the series, in (x, y, z) order
    assert reports[1].labels_found == []


def test_empty_missing_and_unreadable_are_named(tmp_path: Path, hippocampus: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.md").write_text("nothing here")
    with pytest.raises(DataError, match=r"empty holds no images .*DICOM series.*readme\.md"):
        load_image_folders([empty])
    with pytest.raises(DataError, match="nowhere does not exist"):
        load_image_folders([tmp_path / "nowhere"])
    with pytest.raises(DataError, match="No image folder given"):
        load_image_folders([])
    loop = tmp_path / "loop"
    loop.mkdir()
    shutil.copy(hippocampus / "imagesTr" / "hippocampus_001.nii.gz", loop)
    os.symlink("b.nii.gz", loop / "a.nii.gz")
    os.symlink("a.nii.gz", loop / "b.nii.gz")
    with pytest.raises(DataError, match=r"a\.nii\.gz of case 'a' cannot be opened: symbolic link loop"):
        load_image_folders([loop])
    # A corrupt file is found by name and reported by the check, naming the file.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    info = load_image_folders([bad])
    text = format_report(check_dataset(info, progress=False), info)
    assert "broken.nii.gz" in text and "cannot read image file" in text and "1 errors" in text


def test_two_dicom_series_in_one_folder_are_refused(hippocampus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "series"
    write_dicom_series(hippocampus / "imagesTr" / "hippocampus_001.nii.gz", folder)
    second = tmp_path / "second"
    write_dicom_series(hippocampus / "imagesTr" / "hippocampus_004.nii.gz", second)
    for i, f in enumerate(sorted(second.iterdir())):
        img = sitk.ReadImage(str(f))
        img.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.99")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"other{i:04d}.dcm"))
        writer.Execute(img)
    with pytest.raises(DataError, match=r"series holds 2 DICOM series.*own folder"):
        find_images(folder)


def test_unlabeled_dir_of_a_dataset_is_searched_recursively(
    mini: Path, hippocampus: Path, tmp_path: Path
) -> None:
    extra = tmp_path / "extra"
    (extra / "deep").mkdir(parents=True)
    shutil.copy(hippocampus / "imagesTr" / "hippocampus_008.nii.gz", extra / "u1.nii.gz")
    shutil.copy(hippocampus / "imagesTr" / "hippocampus_011.nii.gz", extra / "deep" / "u2.nii.gz")
    info = load_dataset(mini, unlabeled_dir=extra)
    assert [c.id for c in info.unlabeled] == ["deep/u2", "u1"] and len(info.cases) == 3
    second = tmp_path / "second"
    second.mkdir()
    shutil.copy(hippocampus / "imagesTr" / "hippocampus_008.nii.gz", second / "u1.nii.gz")
    info = load_dataset(mini, unlabeled_dir=[str(extra), str(second)])
    assert [c.id for c in info.unlabeled] == ["extra/deep/u2", "extra/u1", "second/u1"]
    assert np.all([c.label is None for c in info.unlabeled])
