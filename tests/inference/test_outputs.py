"""Writing label and voxel maps on the input's own grid, in its format or another, atomically."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medcl.inference.outputs import image_suffix, write_labels, write_map

CASE = "hippocampus_001"


@pytest.fixture
def oblique(hippocampus: Path, tmp_path: Path) -> Path:
    """A real Hippocampus label map with an oblique, anisotropic affine (its header otherwise kept)."""
    src = nib.load(hippocampus / "labelsTr" / f"{CASE}.nii.gz")
    angle = np.deg2rad(30)
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    ) @ np.diag([0.7, 1.1, 3.0])
    affine[:3, 3] = [12.0, -40.0, 5.5]
    path = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), affine, src.header), path)
    return path


def test_nifti_output_keeps_the_reference_header(oblique: Path, tmp_path: Path) -> None:
    ref = nib.load(oblique)
    labels = (np.asarray(ref.dataobj) == 2).astype(np.int64)  # any integer type in, uint8 out
    out = write_labels(labels, oblique, tmp_path / "out" / "mask.nii.gz")
    assert out == tmp_path / "out" / "mask.nii.gz"
    mask = nib.load(out)
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, ref.affine, atol=1e-6)
    assert mask.header.get_xyzt_units() == ref.header.get_xyzt_units()
    assert int(mask.header["qform_code"]) == int(ref.header["qform_code"])
    assert int(mask.header["sform_code"]) == int(ref.header["sform_code"])
    np.testing.assert_array_equal(np.asarray(mask.dataobj), labels)
    assert sorted(p.name for p in out.parent.iterdir()) == ["mask.nii.gz"]  # no temporary file left


def test_nrrd_output_copies_origin_spacing_and_direction(oblique: Path, tmp_path: Path) -> None:
    labels = np.asarray(nib.load(oblique).dataobj).astype(np.uint8)
    out = write_labels(labels, oblique, tmp_path / "mask.nrrd")  # NIfTI reference, NRRD output
    written, reference = sitk.ReadImage(str(out)), sitk.ReadImage(str(oblique))
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-5)
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written).transpose(2, 1, 0), labels)
    # An NRRD reference too (SimpleITK reads it), back to NIfTI through SimpleITK.
    again = write_labels(labels, out, tmp_path / "again.nii.gz")
    np.testing.assert_allclose(nib.load(again).affine, nib.load(oblique).affine, atol=1e-4)


def test_write_map_is_float32(oblique: Path, tmp_path: Path) -> None:
    values = np.random.default_rng(0).random(nib.load(oblique).shape)
    out = write_map(values, oblique, tmp_path / "u.nii.gz")
    img = nib.load(out)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(img.dataobj), values.astype(np.float32))


def test_a_failed_write_leaves_no_file(oblique: Path, tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    with pytest.raises(ValueError):
        write_labels(np.zeros((3, 3), np.uint8), oblique, folder / "mask.nrrd")  # 2D: not a volume
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("a.nii.gz", ".nii.gz"),
        ("A.NII", ".nii"),
        ("b.nrrd", ".nrrd"),
        ("c.mha", ".mha"),
        ("d.v1.png", ".png"),
    ],
)
def test_image_suffix(name: str, suffix: str, tmp_path: Path) -> None:
    assert image_suffix(tmp_path / name) == suffix
    assert image_suffix(tmp_path) == ""  # a folder: a DICOM series
