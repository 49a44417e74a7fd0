"""Tests for medcl.data.validate: the real datasets are clean, and every kind of broken file is reported."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcl.data.check_report import CaseReport, Problem, format_report
from medcl.data.dataset import DatasetInfo, load_dataset
from medcl.data.validate import check_case, check_dataset

IDS = ("hippocampus_001", "hippocampus_004", "hippocampus_006")  # the cases of the `mini` fixture

BAD = "hippocampus_004"  # the case each test breaks


def image_path(root: Path, case_id: str = BAD) -> Path:
    return root / "imagesTr" / f"{case_id}.nii.gz"


def label_path(root: Path, case_id: str = BAD) -> Path:
    return root / "labelsTr" / f"{case_id}.nii.gz"


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine.copy()


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


def check(root: Path) -> tuple[DatasetInfo, list[CaseReport]]:
    info = load_dataset(root)
    return info, check_dataset(info, progress=False)


def problems_of(reports: list[CaseReport], case_id: str = BAD) -> list[Problem]:
    return next(r for r in reports if r.case == case_id).problems


def only_problem(reports: list[CaseReport], severity: str, file: Path) -> Problem:
    """The single problem of the whole dataset, which must be on ``file`` with ``severity``."""
    found = [p for r in reports for p in r.problems]
    assert len(found) == 1, found
    problem = found[0]
    assert (problem.case, problem.severity, problem.file) == (BAD, severity, file)
    return problem


# --- the real datasets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["Task04_Hippocampus", "ACDC", "LA2018"])
def test_real_datasets_are_clean(shared_data: Path, folder: str):
    info = load_dataset(shared_data / folder)
    reports = check_dataset(info, progress=False, workers=2)
    assert len(reports) == len(info.cases)
    assert [p for r in reports for p in r.problems] == []
    assert all(r.shape is not None and len(r.shape) == 3 for r in reports)
    assert all(r.orientation == "RAS" for r in reports)
    assert format_report(reports, info) == f"{len(info.cases)} cases checked: 0 errors, 0 warnings"


def test_hippocampus_report_contents(shared_data: Path):
    info = load_dataset(shared_data / "Task04_Hippocampus")
    report = check_case(info.case("hippocampus_001"), info)
    assert report.shape == (35, 51, 35)
    assert report.spacing == (1.0, 1.0, 1.0)
    assert report.labels_found == [0, 1, 2]
    la = load_dataset(shared_data / "LA2018")
    assert check_case(la.cases[0], la).spacing == pytest.approx((0.625, 0.625, 0.625))


# --- broken cases ------------------------------------------------------------------------------------------


def test_truncated_gzip_is_an_error_not_a_crash(mini: Path):
    path = image_path(mini)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _, reports = check(mini)
    problem = only_problem(reports, "error", path)
    assert problem.message.startswith("cannot read image file: ")
    assert "(EOFError)" in problem.message


def test_truncated_uncompressed_nifti(mini: Path):
    gz = label_path(mini)
    raw = gz.with_name(f"{BAD}.nii")
    raw.write_bytes(gzip.decompress(gz.read_bytes())[:-500])
    gz.unlink()
    data = json.loads((mini / "dataset.json").read_text())
    data["training"][1]["label"] = f"./labelsTr/{BAD}.nii"
    (mini / "dataset.json").write_text(json.dumps(data))
    _, reports = check(mini)
    problem = only_problem(reports, "error", raw)
    assert problem.message.startswith("cannot read label file: ")


def test_nan_and_inf_intensities(mini: Path):
    path = image_path(mini)
    array, affine = load(path)
    array = array.astype(np.float32)
    array[0, 0, :3] = np.nan
    array[1, 1, 0] = np.inf
    save(path, array, affine)
    _, reports = check(mini)
    problem = only_problem(reports, "error", path)
    assert problem.message == f"image has 3 NaN and 1 Inf voxels (of {array.size})."


def test_2d_image(mini: Path):
    path = image_path(mini)
    array, affine = load(path)
    save(path, array[:, :, 10], affine)
    _, reports = check(mini)
    problem = only_problem(reports, "error", path)
    assert problem.message == f"image is 2D with shape {array.shape[:2]}; expected a 3D volume."


def test_4d_image(mini: Path):
    path = image_path(mini)
    array, affine = load(path)
    save(path, np.stack([array, array], axis=-1), affine)
    _, reports = check(mini)
    problem = only_problem(reports, "error", path)
    assert problem.message.startswith(f"image is 4D with shape {(*array.shape, 2)}; expected a 3D volume")


def test_4d_image_with_trailing_singleton_is_fine(mini: Path):
    path = image_path(mini)
    array, affine = load(path)
    save(path, array[..., None], affine)
    _, reports = check(mini)
    assert problems_of(reports) == []
    assert next(r for r in reports if r.case == BAD).shape == array.shape


def test_label_value_not_in_dataset_json(mini: Path):
    path = label_path(mini)
    array, affine = load(path)
    array[0, 0, 0] = 7
    save(path, array, affine)
    _, reports = check(mini)
    problem = only_problem(reports, "error", path)
    assert problem.message == "label values [7] are not in dataset.json labels [0, 1, 2]."
    assert next(r for r in reports if r.case == BAD).labels_found == [0, 1, 2, 7]


def test_non_integer_label(mini: Path):
    path = label_path(mini)
    array, affine = load(path)
    array = array.astype(np.float32)
    array[0, 0, 0] = 0.5
    save(path, array, affine)
    _, reports = check(mini)
    problem = only_problem(reports, "error", path)
    assert problem.message.startswith("label has 1 non-integer value(s) (0.5)")


def test_label_shape_mismatch(mini: Path):
    path = label_path(mini)
    array, affine = load(path)
    image_shape = array.shape
    save(path, array[:-2], affine)
    _, reports = check(mini)
    problem = only_problem(reports, "error", path)
    cropped = (image_shape[0] - 2, *image_shape[1:])
    assert problem.message == f"label shape {cropped} differs from image shape {image_shape}."


def test_label_spacing_mismatch(mini: Path):
    path = label_path(mini)
    array, affine = load(path)
    affine[:3, :3] *= 2
    save(path, array, affine)
    _, reports = check(mini)
    problem = only_problem(reports, "error", path)
    assert problem.message == "label spacing (2, 2, 2) differs from image spacing (1, 1, 1)."


def test_label_origin_mismatch_is_a_warning(mini: Path):
    path = label_path(mini)
    array, affine = load(path)
    affine[:3, 3] += [0.0, 0.0, 0.5]
    save(path, array, affine)
    _, reports = check(mini)
    problem = only_problem(reports, "warning", path)
    assert problem.message == "label origin (1, 1, 1.5) differs from image origin (1, 1, 1) by 0.5 mm."


def test_label_direction_mismatch_is_a_warning(mini: Path):
    path = label_path(mini)
    array, affine = load(path)
    affine[0, 0] = -1
    save(path, array, affine)
    _, reports = check(mini)
    problem = only_problem(reports, "warning", path)
    assert problem.message.startswith("label direction LAS differs from image direction RAS")


def test_only_background_label_is_a_warning(mini: Path):
    path = label_path(mini)
    array, affine = load(path)
    save(path, np.zeros_like(array), affine)
    _, reports = check(mini)
    problem = only_problem(reports, "warning", path)
    assert problem.message == "label contains only background (0)."


def test_anisotropic_spacing_is_a_warning(mini: Path):
    for path in (image_path(mini), label_path(mini)):
        array, affine = load(path)
        affine[2, 2] = 5.0
        save(path, array, affine)
    _, reports = check(mini)
    problem = only_problem(reports, "warning", image_path(mini))
    assert problem.message.startswith("spacing (1, 1, 5) is anisotropic (ratio 5.0 > 3)")


def test_oblique_direction_is_a_warning(mini: Path):
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    for path in (image_path(mini), label_path(mini)):
        array, affine = load(path)
        affine[:3, :3] = rotation
        save(path, array, affine)
    _, reports = check(mini)
    problem = only_problem(reports, "warning", image_path(mini))
    assert problem.message == "direction is oblique (axes not aligned with the scanner axes)."


def test_orientation_differs_from_majority(mini: Path):
    for path in (image_path(mini), label_path(mini)):
        array, affine = load(path)
        flip = np.diag([-1.0, 1.0, 1.0, 1.0])
        flip[0, 3] = array.shape[0] - 1
        save(path, array[::-1].copy(), affine @ flip)  # same anatomy, stored as LAS
    _, reports = check(mini)
    problem = only_problem(reports, "warning", image_path(mini))
    assert problem.message == "orientation LAS differs from the dataset majority RAS (2 of 3 cases)."


def test_channels_must_share_shape(mini: Path, hippo: Path):
    data = json.loads((mini / "dataset.json").read_text())
    data["modality"] = {"0": "T1", "1": "T2"}
    data.pop("training")
    (mini / "dataset.json").write_text(json.dumps(data))
    for case_id in IDS:
        first = image_path(mini, case_id).rename(mini / "imagesTr" / f"{case_id}_0000.nii.gz")
        shutil.copy(first, mini / "imagesTr" / f"{case_id}_0001.nii.gz")
    second = mini / "imagesTr" / f"{BAD}_0001.nii.gz"
    array, affine = load(second)
    save(second, array[:, :-1], affine)
    _, reports = check(mini)
    problem = only_problem(reports, "error", second)
    assert problem.message.startswith("channel 1 shape") and "differs from channel 0 shape" in problem.message


def test_unlabeled_images_are_checked_too(mini: Path, hippo: Path):
    (mini / "imagesTs").mkdir()
    path = mini / "imagesTs" / "hippocampus_008.nii.gz"
    array, affine = load(hippo / "imagesTr" / "hippocampus_008.nii.gz")
    save(path, array[:, :, 0], affine)
    info, reports = check(mini)
    assert [c.id for c in info.unlabeled] == ["hippocampus_008"]
    problem = problems_of(reports, "hippocampus_008")[0]
    assert (problem.severity, problem.file) == ("error", path)
    assert next(r for r in reports if r.case == "hippocampus_008").labels_found == []


def test_degenerate_affine_is_an_error(mini: Path):
    path = image_path(mini)
    array, affine = load(path)
    affine[:3, 2] = 0
    image = nib.Nifti1Image(array, None)
    image.set_sform(affine, code=1)  # nibabel refuses a degenerate qform, a sform is stored as given
    nib.save(image, str(path))
    _, reports = check(mini)
    messages = [(p.file, p.severity, p.message) for p in problems_of(reports)]
    assert (path, "error", "affine is degenerate (voxel size (1, 1, 0)).") in messages
    assert next(r for r in reports if r.case == BAD).orientation is None
