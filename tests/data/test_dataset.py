"""Tests for medcl.data.dataset on the real datasets and on small layouts built from real Hippocampus files."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from medcl.data.dataset import load_dataset
from medcl.data.discovery import case_id_from_path
from medcl.errors import DataError

HIPPO_IDS = ("hippocampus_001", "hippocampus_004", "hippocampus_006")
HIPPO_LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}


@pytest.fixture(scope="module")
def hippo(shared_data: Path) -> Path:
    return shared_data / "Task04_Hippocampus"


def make_msd(hippo: Path, root: Path, ids: tuple[str, ...] = HIPPO_IDS, *, listed: bool = True) -> Path:
    """An MSD-layout copy of a few real Hippocampus cases (with a 'training' list unless ``listed=False``)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case_id in ids:
        shutil.copy(hippo / "imagesTr" / f"{case_id}.nii.gz", root / "imagesTr")
        shutil.copy(hippo / "labelsTr" / f"{case_id}.nii.gz", root / "labelsTr")
    data: dict = {"name": "mini", "modality": {"0": "MRI"}, "labels": HIPPO_LABELS}
    if listed:
        data["training"] = [
            {"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids
        ]
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def make_nnunet(hippo: Path, root: Path, ids: tuple[str, ...] = HIPPO_IDS, channels: int = 1) -> Path:
    """An nnU-Net v2 copy: CASE_000k.nii.gz images, CASE.nii.gz labels, name -> int labels, no list."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case_id in ids:
        for k in range(channels):
            shutil.copy(
                hippo / "imagesTr" / f"{case_id}.nii.gz", root / "imagesTr" / f"{case_id}_{k:04d}.nii.gz"
            )
        shutil.copy(hippo / "labelsTr" / f"{case_id}.nii.gz", root / "labelsTr" / f"{case_id}.nii.gz")
    data = {
        "name": "Dataset042_Mini",
        "channel_names": {str(k): ("T1" if k == 0 else f"T{k + 1}") for k in range(channels)},
        "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": len(ids),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def edit_json(root: Path, **changes: object) -> None:
    path = root / "dataset.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


# --- the real datasets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "n_cases", "labels", "first_id"),
    [
        ("Task04_Hippocampus", 208, {0: "background", 1: "Anterior", 2: "Posterior"}, "hippocampus_001"),
        ("ACDC", 160, {0: "background", 1: "RV", 2: "Myo", 3: "LV"}, "patient002_frame01"),
        ("LA2018", 8, {0: "background", 1: "left atrium"}, "la_5QFK2PMHNX7UALK52NNA"),
    ],
)
def test_real_datasets_load_quickly(shared_data: Path, folder, n_cases, labels, first_id):
    start = time.perf_counter()
    info = load_dataset(shared_data / folder)
    assert time.perf_counter() - start < 1.0
    assert len(info.cases) == n_cases
    assert info.unlabeled == []
    assert info.labels == labels
    assert info.num_classes == len(labels)
    assert info.class_names == [labels[i] for i in range(len(labels))]
    assert info.channel_names == {0: "MRI"}
    assert info.modality == "mri"
    assert info.cases[0].id == first_id
    ids = [c.id for c in info.cases]
    assert ids == sorted(ids) and len(set(ids)) == n_cases
    for case in info.cases:
        assert len(case.images) == 1 and case.images[0].is_absolute() and case.images[0].is_file()
        assert case.label is not None and case.label.is_file()
        assert case.label.parent.name == "labelsTr"
        assert case_id_from_path(case.images[0]) == case.id


# --- nnU-Net and MSD variants --------------------------------------------------------------------------------


def test_nnunet_layout_with_channel_suffix_and_name_to_int_labels(hippo: Path, tmp_path: Path):
    root = make_nnunet(hippo, tmp_path / "nn", channels=2)
    info = load_dataset(root)
    assert info.name == "Dataset042_Mini"
    assert info.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert info.channel_names == {0: "T1", 1: "T2"}
    assert [c.id for c in info.cases] == list(HIPPO_IDS)
    case = info.case("hippocampus_004")
    assert [p.name for p in case.images] == ["hippocampus_004_0000.nii.gz", "hippocampus_004_0001.nii.gz"]
    assert case.label == root / "labelsTr" / "hippocampus_004.nii.gz"


def test_msd_without_training_list_pairs_by_id(hippo: Path, tmp_path: Path):
    root = make_msd(hippo, tmp_path / "msd", listed=False)
    info = load_dataset(root)
    assert [c.id for c in info.cases] == list(HIPPO_IDS)
    assert all(c.label is not None and c.label.stem.startswith(c.id) for c in info.cases)


def test_plain_ids_ending_in_four_digits_are_not_channels(hippo: Path, tmp_path: Path):
    root = make_msd(hippo, tmp_path / "msd", listed=False)
    for folder in ("imagesTr", "labelsTr"):
        for i, case_id in enumerate(HIPPO_IDS):
            (root / folder / f"{case_id}.nii.gz").rename(root / folder / f"case_{i + 1:04d}.nii.gz")
    info = load_dataset(root)
    assert [c.id for c in info.cases] == ["case_0001", "case_0002", "case_0003"]


def test_listed_image_falls_back_to_channel_files(hippo: Path, tmp_path: Path):
    root = make_nnunet(hippo, tmp_path / "nn")
    edit_json(
        root,
        training=[{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in HIPPO_IDS],
    )
    info = load_dataset(root)
    assert info.case("hippocampus_001").images == (root / "imagesTr" / "hippocampus_001_0000.nii.gz",)


def test_unlabeled_from_imagests_imagestr_and_extra_folder(hippo: Path, tmp_path: Path):
    root = make_msd(hippo, tmp_path / "msd", listed=False)
    (root / "imagesTs").mkdir()
    shutil.copy(hippo / "imagesTr" / "hippocampus_008.nii.gz", root / "imagesTs")
    # An image in imagesTr with no label is kept as unlabeled, not dropped.
    shutil.copy(hippo / "imagesTr" / "hippocampus_011.nii.gz", root / "imagesTr")
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(hippo / "imagesTr" / "hippocampus_014.nii.gz", extra)
    info = load_dataset(root, unlabeled_dir=extra)
    assert [c.id for c in info.cases] == list(HIPPO_IDS)
    assert [c.id for c in info.unlabeled] == ["hippocampus_008", "hippocampus_011", "hippocampus_014"]
    assert all(c.label is None for c in info.unlabeled)
    assert info.all_ids == [*HIPPO_IDS, "hippocampus_008", "hippocampus_011", "hippocampus_014"]

    # relative to the dataset folder
    shutil.move(str(extra), root / "more")
    info = load_dataset(root, unlabeled_dir="more")
    assert info.case("hippocampus_014").images == (root / "more" / "hippocampus_014.nii.gz",)


def test_unlisted_image_of_msd_training_list_is_unlabeled(hippo: Path, tmp_path: Path):
    root = make_msd(hippo, tmp_path / "msd")
    shutil.copy(hippo / "imagesTr" / "hippocampus_011.nii.gz", root / "imagesTr")
    info = load_dataset(root)
    assert [c.id for c in info.unlabeled] == ["hippocampus_011"]


def test_msd_test_list_is_unlabeled(hippo: Path, tmp_path: Path):
    root = make_msd(hippo, tmp_path / "msd")
    (root / "imagesTs").mkdir()
    shutil.copy(hippo / "imagesTr" / "hippocampus_008.nii.gz", root / "imagesTs")
    edit_json(root, test=["./imagesTs/hippocampus_008.nii.gz"])
    info = load_dataset(root)
    assert [c.id for c in info.unlabeled] == ["hippocampus_008"]
    edit_json(root, test=["./imagesTs/hippocampus_999.nii.gz"])
    with pytest.raises(
        DataError, match=r"Entry 0 of 'test' .*hippocampus_999\.nii\.gz, which does not exist"
    ):
        load_dataset(root)


# --- errors ----------------------------------------------------------------------------------------------


def test_missing_root_and_root_is_a_file(tmp_path: Path):
    with pytest.raises(
        DataError, match=rf"Dataset folder {re.escape(str(tmp_path / 'nope'))} does not exist"
    ):
        load_dataset(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match=r"f\.txt is not a folder"):
        load_dataset(tmp_path / "f.txt")


def test_missing_dataset_json(hippo: Path, tmp_path: Path):
    root = make_msd(hippo, tmp_path / "msd")
    (root / "dataset.json").unlink()
    with pytest.raises(DataError, match=rf"{re.escape(str(root))} has no dataset\.json"):
        load_dataset(root)


def test_invalid_json_gives_position(hippo: Path, tmp_path: Path):
    root = make_msd(hippo, tmp_path / "msd")
    (root / "dataset.json").write_text('{\n "name": "x",\n "labels": {"0": "background",}\n}')
    with pytest.raises(
        DataError, match=rf"{re.escape(str(root / 'dataset.json'))} is not valid JSON: .* line 3, column \d+"
    ):
        load_dataset(root)


def test_missing_labels(hippo: Path, tmp_path: Path):
    root = make_msd(hippo, tmp_path / "msd")
    edit_json(root, labels=None)
    with pytest.raises(DataError, match=r"dataset\.json has no 'labels' map"):
        load_dataset(root)


def test_listed_file_missing_names_full_path(hippo: Path, tmp_path: Path):
    root = make_msd(hippo, tmp_path / "msd")
    label = root / "labelsTr" / "hippocampus_004.nii.gz"
    label.rename(tmp_path / "kept.nii.gz")
    with pytest.raises(
        DataError, match=rf"Entry 1 of 'training' .*names the label {re.escape(str(label))}, which"
    ):
        load_dataset(root)
    (tmp_path / "kept.nii.gz").rename(label)
    image = root / "imagesTr" / "hippocampus_006.nii.gz"
    image.unlink()
    with pytest.raises(
        DataError, match=rf"Entry 2 of 'training' .*names the image {re.escape(str(image))}, which"
    ):
        load_dataset(root)


def test_empty_imagestr(hippo: Path, tmp_path: Path):
    root = make_nnunet(hippo, tmp_path / "nn")
    for path in (root / "imagesTr").iterdir():
        path.unlink()
    (root / "imagesTr" / "notes.txt").write_text("no images here")
    with pytest.raises(
        DataError, match=rf"{re.escape(str(root / 'imagesTr'))} holds no images with a supported extension"
    ):
        load_dataset(root)


def test_channel_gap(hippo: Path, tmp_path: Path):
    root = make_nnunet(hippo, tmp_path / "nn", channels=3)
    (root / "imagesTr" / "hippocampus_006_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"'hippocampus_006' .* has channel files _0000, _0002 but no _0001"):
        load_dataset(root)


def test_channel_count_must_match_channel_names(hippo: Path, tmp_path: Path):
    root = make_nnunet(hippo, tmp_path / "nn", channels=2)
    edit_json(root, channel_names={"0": "T1"})
    with pytest.raises(DataError, match=r"'hippocampus_001' has 2 image file\(s\) .* names 1 channel"):
        load_dataset(root)


def test_label_without_image(hippo: Path, tmp_path: Path):
    root = make_nnunet(hippo, tmp_path / "nn")
    (root / "imagesTr" / "hippocampus_004_0000.nii.gz").unlink()
    with pytest.raises(DataError, match=r"hippocampus_004\.nii\.gz has no image in"):
        load_dataset(root)


def test_duplicate_id_between_labeled_and_unlabeled(hippo: Path, tmp_path: Path):
    root = make_msd(hippo, tmp_path / "msd")
    (root / "imagesTs").mkdir()
    shutil.copy(hippo / "imagesTr" / "hippocampus_001.nii.gz", root / "imagesTs")
    with pytest.raises(DataError, match=r"Case id 'hippocampus_001' is used twice"):
        load_dataset(root)


def test_missing_unlabeled_dir(hippo: Path, tmp_path: Path):
    root = make_msd(hippo, tmp_path / "msd")
    with pytest.raises(
        DataError, match=rf"Unlabeled image folder {re.escape(str(root / 'nowhere'))} does not exist"
    ):
        load_dataset(root, unlabeled_dir="nowhere")


def test_unsupported_file_ending(hippo: Path, tmp_path: Path):
    root = make_nnunet(hippo, tmp_path / "nn")
    edit_json(root, file_ending=".png")
    with pytest.raises(DataError, match=r"'file_ending' '\.png' .* is not supported"):
        load_dataset(root)


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_symlink_loop_in_imagestr_names_the_file(hippo: Path, tmp_path: Path, layout: str):
    root = (make_msd if layout == "msd" else make_nnunet)(hippo, tmp_path / layout)
    ext = "_0000.nii.gz" if layout == "nnunet" else ".nii.gz"
    (root / "imagesTr" / f"a{ext}").symlink_to(f"b{ext}")
    (root / "imagesTr" / f"b{ext}").symlink_to(f"a{ext}")
    with pytest.raises(
        DataError, match=rf"{re.escape(str(root / 'imagesTr' / f'a{ext}'))} .*symbolic link loop"
    ):
        load_dataset(root)
    # `medcl data check` keeps them, one case each, to report them per case.
    info = load_dataset(root, keep_unreadable=True)
    assert [c.id for c in info.unlabeled] == ["a", "b"]
    assert [c.id for c in info.cases] == list(HIPPO_IDS)


def test_listed_image_that_is_a_symlink_loop(hippo: Path, tmp_path: Path):
    root = make_msd(hippo, tmp_path / "msd")
    image = root / "imagesTr" / "hippocampus_004.nii.gz"
    image.unlink()
    image.symlink_to(image.name)
    with pytest.raises(
        DataError,
        match=r"names the image .*hippocampus_004\.nii\.gz, which cannot be opened: "
        r"symbolic link loop \(hippocampus_004\.nii\.gz -> hippocampus_004\.nii\.gz\)",
    ):
        load_dataset(root)
