"""``medcl pretrain --images``, ``--unlabeled`` and ``medcl data check --images`` from the command line: the
flags reach the config, bad input fails in one line naming the folder or file, before any run folder."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

from medcl.cli import main

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "configs" / "hippocampus" / "pretrain_global.yaml"
SUPERVISED = REPO / "configs" / "hippocampus" / "supervised.yaml"


@pytest.fixture
def scans(hippocampus: Path, tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    (root / "a").mkdir(parents=True)
    shutil.copy(hippocampus / "imagesTr" / "hippocampus_001.nii.gz", root / "a")
    shutil.copy(hippocampus / "imagesTr" / "hippocampus_004.nii.gz", root)
    (root / "notes.txt").write_text("scanner B\n")
    return root


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "pass --modality ct"),
        (["--modality", "mri", "--data", "somewhere"], "give either --data"),
        (["--modality", "mri", "--unlabeled", "more"], "--unlabeled adds images to a labeled dataset"),
    ],
)
def test_images_without_what_it_needs(scans: Path, output_dir: Path, extra, message, capsys) -> None:
    code = main(["pretrain", str(PRETRAIN), "--images", str(scans), "--runs", str(output_dir), *extra])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    assert not (output_dir / "runs").exists()


def test_images_refused_for_a_method_that_needs_labels(scans: Path, output_dir: Path, capsys) -> None:
    code = main(
        ["train", str(SUPERVISED), "--images", str(scans), "--modality", "mri", "--runs", str(output_dir)]
    )
    err = capsys.readouterr().err
    assert code == 1 and "method 'supervised' trains or validates on labeled cases" in err
    assert not (output_dir / "runs").exists()


def test_empty_folder_and_corrupt_file_are_named(
    scans: Path, output_dir: Path, tmp_path: Path, capsys
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["pretrain", str(PRETRAIN), "--modality", "mri", "--runs", str(output_dir), "--no-progress"]
    assert main([*args, "--images", str(empty)]) == 1
    assert f"Image folder {empty} holds no images" in capsys.readouterr().err
    (scans / "a" / "broken.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    assert main([*args, "--images", str(scans)]) == 1
    err = capsys.readouterr().err
    assert "a/broken: a/broken.nii.gz: cannot read image file" in err and "Traceback" not in err
    assert not (output_dir / "runs").exists()


def test_data_check_images(scans: Path, tmp_path: Path, capsys) -> None:
    assert main(["data", "check", "--images", str(scans), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 cases checked: 0 errors, 0 warnings" in out
    assert f"1 file(s) skipped, not images: {scans / 'notes.txt'}" in out
    report = tmp_path / "report.json"
    (scans / "bad.nii.gz").write_bytes(b"\x00" * 10)
    assert main(["data", "check", "--images", str(scans), "--no-progress", "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^bad\s+error\s+bad\.nii\.gz\s+cannot read image file", out, re.M), out
    cases = json.loads(report.read_text())["cases"]
    assert [c["case"] for c in cases] == ["a/hippocampus_001", "bad", "hippocampus_004"]
    assert all(c["labels_found"] == [] for c in cases)
    assert main(["data", "check", "--no-progress"]) == 1
    assert "give the dataset folder DIR" in capsys.readouterr().err
    assert main(["data", "check", str(scans), "--images", str(scans)]) == 1
    assert "not both" in capsys.readouterr().err


def test_semi_supervised_run_trains_on_the_unlabeled_folder(
    mini: Path, hippocampus: Path, tmp_path: Path, output_dir: Path
) -> None:
    """A splits file that predates the folder: the folder's images still join the unlabeled stream."""
    extra = tmp_path / "extra"
    (extra / "deep").mkdir(parents=True)
    shutil.copy(hippocampus / "imagesTr" / "hippocampus_008.nii.gz", extra / "u1.nii.gz")
    shutil.copy(hippocampus / "imagesTr" / "hippocampus_011.nii.gz", extra / "deep" / "u2.nii.gz")
    splits = tmp_path / "splits.json"
    ids = ["hippocampus_001", "hippocampus_004", "hippocampus_006"]
    splits.write_text(json.dumps({"labeled": ids[:2], "unlabeled": [], "val": ids[2:], "test": []}))
    code = main(
        [
            "train",
            str(REPO / "configs" / "hippocampus" / "mcsc.yaml"),
            "--data",
            str(mini),
            "--splits",
            str(splits),
            "--unlabeled",
            str(extra),
            "--runs",
            str(output_dir),
            "--steps",
            "1",
            "--no-progress",
            *("--set", "data.patch_size=[64,64]", "--set", "data.batch_size=2"),
            *("--set", "data.unlabeled_batch_size=2", "--set", "tracking.enabled=false"),
            *("--set", "val.hd95=false", "--set", "method.transformer.feature_size=12"),
        ]
    )
    assert code == 0
    (run_dir,) = (output_dir / "runs").iterdir()
    used = json.loads((run_dir / "splits.json").read_text())
    assert used["unlabeled"] == ["deep/u2", "u1"] and used["labeled"] == ids[:2]


def test_a_plain_folder_given_as_data_points_to_images(scans: Path, output_dir: Path, capsys) -> None:
    assert main(["pretrain", str(PRETRAIN), "--data", str(scans), "--runs", str(output_dir)]) == 1
    err = capsys.readouterr().err
    assert f"--data {scans} has no dataset.json" in err and f"--images {scans} --modality ct|mri" in err
