"""Tests for ``medcl data check`` and ``medcl data split`` (handlers driven through their own argparse parser)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcl.commands.data import add_parser
from medcl.errors import DataError, MedclError

IDS = ("hippocampus_001", "hippocampus_004", "hippocampus_006")  # the cases of the `mini` fixture

BAD = "hippocampus_004"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medcl")
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    add_parser(sub)
    return parser


REPO = Path(__file__).resolve().parents[2]


def medcl(*argv: str | Path) -> int:
    args = build_parser().parse_args([str(a) for a in argv])
    return args.func(args)


# --- broken files: each one gets an error line naming the file, and exit status 1 -----------------------------


def _rewrite(path: Path, change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
    image = nib.load(str(path))
    array, affine = change(np.asarray(image.dataobj), image.affine.copy())
    nib.save(nib.Nifti1Image(array, affine), str(path))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def nan_voxels(path: Path) -> None:
    def change(a, aff):
        a = a.astype(np.float32)
        a[2, 2, 2] = np.nan
        return a, aff

    _rewrite(path, change)


def to_2d(path: Path) -> None:
    _rewrite(path, lambda a, aff: (a[:, :, 5], aff))


def to_4d(path: Path) -> None:
    _rewrite(path, lambda a, aff: (np.stack([a, a, a], axis=-1), aff))


def value_7(path: Path) -> None:
    def change(a, aff):
        a = a.copy()
        a[0, 0, 0] = 7
        return a, aff

    _rewrite(path, change)


def crop(path: Path) -> None:
    _rewrite(path, lambda a, aff: (a[:, :-3], aff))


def double_spacing(path: Path) -> None:
    def change(a, aff):
        aff[:3, :3] *= 2
        return a, aff

    _rewrite(path, change)


@pytest.mark.parametrize(
    ("folder", "breaker", "expected"),
    [
        ("imagesTr", truncate, "cannot read image file"),
        ("imagesTr", nan_voxels, "image has 1 NaN and 0 Inf voxels"),
        ("imagesTr", to_2d, "image is 2D with shape"),
        ("imagesTr", to_4d, "image is 4D with shape"),
        ("labelsTr", value_7, "label values [7] are not in dataset.json labels [0, 1, 2]"),
        ("labelsTr", crop, "label shape"),
        ("labelsTr", double_spacing, "label spacing (2, 2, 2) differs from image spacing (1, 1, 1)"),
        ("labelsTr", truncate, "cannot read label file"),
    ],
)
def test_check_reports_broken_file_and_exits_1(mini: Path, capsys, folder, breaker, expected):
    broken = mini / folder / f"{BAD}.nii.gz"
    breaker(broken)
    assert medcl("data", "check", mini, "--no-progress") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "3 cases checked: 1 errors, 0 warnings"
    row = lines[1]
    assert row.split()[:3] == [BAD, "error", f"{folder}/{BAD}.nii.gz"]
    assert expected in row


def test_check_warnings_only_exits_0(mini: Path, capsys):
    _rewrite(mini / "labelsTr" / f"{BAD}.nii.gz", lambda a, aff: (np.zeros_like(a), aff))
    assert medcl("data", "check", mini, "--no-progress") == 0
    out = capsys.readouterr().out
    assert "label contains only background (0)." in out
    assert out.splitlines()[-1] == "3 cases checked: 0 errors, 1 warnings"


@pytest.mark.parametrize("folder", ["Task04_Hippocampus", "LA2018"])
def test_check_real_dataset_exits_0(shared_data: Path, capsys, folder: str):
    n = {"Task04_Hippocampus": 208, "LA2018": 8}[folder]
    assert medcl("data", "check", shared_data / folder, "--no-progress", "--workers", "2") == 0
    assert capsys.readouterr().out.strip() == f"{n} cases checked: 0 errors, 0 warnings"


def test_check_writes_json_where_asked(mini: Path, tmp_path: Path, capsys):
    value_7(mini / "labelsTr" / f"{BAD}.nii.gz")
    out = tmp_path / "reports" / "check.json"
    assert medcl("data", "check", mini, "--no-progress", "--json", out) == 1
    report = json.loads(out.read_text())
    assert (report["cases_checked"], report["errors"]) == (3, 1)
    assert report["dataset"] == str(mini)
    assert f"report written to {out}" in capsys.readouterr().out


def test_check_includes_unlabeled_dir(mini: Path, hippo: Path, tmp_path: Path, capsys):
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(hippo / "imagesTr" / "hippocampus_008.nii.gz", extra)
    assert medcl("data", "check", mini, "--no-progress", "--unlabeled-dir", extra) == 0
    assert capsys.readouterr().out.strip() == "4 cases checked: 0 errors, 0 warnings"


# --- dataset-level errors are MedclError with the path --------------------------------------------------------


def test_check_missing_dataset_json(mini: Path):
    (mini / "dataset.json").unlink()
    with pytest.raises(DataError, match=r"mini has no dataset\.json"):
        medcl("data", "check", mini, "--no-progress")


def test_check_invalid_json(mini: Path):
    (mini / "dataset.json").write_text('{"labels": {"0": "background"')
    with pytest.raises(DataError, match=r"dataset\.json is not valid JSON: .* line 1, column \d+"):
        medcl("data", "check", mini, "--no-progress")


def test_check_empty_imagestr(mini: Path):
    data = json.loads((mini / "dataset.json").read_text())
    data.pop("training")
    (mini / "dataset.json").write_text(json.dumps(data))
    shutil.rmtree(mini / "imagesTr")
    (mini / "imagesTr").mkdir()
    with pytest.raises(DataError, match=r"imagesTr holds no images"):
        medcl("data", "check", mini, "--no-progress")


def test_top_level_cli_prints_error_and_exits_1(mini: Path, capsys):
    from medcl.cli import main

    (mini / "dataset.json").unlink()
    assert main(["data", "check", str(mini), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medcl: error: Dataset folder") and "has no dataset.json" in err


def link_loop(folder: Path) -> tuple[Path, Path]:
    """``a.nii.gz -> b.nii.gz -> a.nii.gz`` in ``folder``: neither link ever reaches a file."""
    a, b = folder / "a.nii.gz", folder / "b.nii.gz"
    a.symlink_to(b.name)
    b.symlink_to(a.name)
    return a, b


def test_check_reports_a_symlink_loop_per_case(mini: Path, capsys):
    link_loop(mini / "imagesTr")
    assert medcl("data", "check", mini, "--no-progress") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "5 cases checked: 2 errors, 0 warnings"
    for row, name in zip(lines[1:3], ("a", "b"), strict=True):
        assert row.split()[:3] == [name, "error", f"imagesTr/{name}.nii.gz"]
        assert "cannot read image file: symbolic link loop" in row


# --- split -----------------------------------------------------------------------------------------------------


def test_split_writes_file_and_prints_counts(shared_data: Path, tmp_path: Path, capsys):
    out = tmp_path / "splits.json"
    assert (
        medcl(
            "data", "split", shared_data / "Task04_Hippocampus", "--labeled", "10%", "--val", "20", "-o", out
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[:4] == [
        "labeled       21 cases",
        "unlabeled    167 cases",
        "val           20 cases",
        "test           0 cases",
    ]
    assert printed[4] == f"splits written to {out}"
    data = json.loads(out.read_text())
    assert (len(data["labeled"]), len(data["unlabeled"]), len(data["val"]), data["test"]) == (21, 167, 20, [])
    assert data["meta"]["seed"] == 0


def test_split_group_by_acdc_is_reproducible(shared_data: Path, tmp_path: Path, capsys):
    argv = [
        "data",
        "split",
        shared_data / "ACDC",
        "--labeled",
        "3",
        "--val",
        "10",
        "--group-by",
        r"patient\d+",
    ]
    assert medcl(*argv, "--seed", "5", "-o", tmp_path / "a.json") == 0
    assert medcl(*argv, "--seed", "5", "-o", tmp_path / "b.json") == 0
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    out = capsys.readouterr().out
    assert "labeled        6 cases (3 groups)" in out
    assert "val           20 cases (10 groups)" in out
    data = json.loads((tmp_path / "a.json").read_text())
    patients = {i.split("_")[0] for i in data["labeled"]}
    assert len(patients) == 3 and all(f"{p}_frame02" in data["labeled"] for p in patients)


def test_split_refuses_to_overwrite_without_force(mini: Path, tmp_path: Path):
    out = tmp_path / "splits.json"
    out.write_text("keep me")
    with pytest.raises(DataError, match=r"splits\.json already exists; pass --force to overwrite it"):
        medcl("data", "split", mini, "--labeled", "1", "-o", out)
    assert out.read_text() == "keep me"
    assert medcl("data", "split", mini, "--labeled", "1", "-o", out, "--force") == 0
    assert json.loads(out.read_text())["labeled"]


def test_split_refuses_to_write_into_dataset_folder(mini: Path):
    before = sorted(p.name for p in mini.rglob("*"))
    for target in (mini / "splits.json", mini / "labelsTr" / "s.json"):
        with pytest.raises(DataError, match=r"is inside the dataset folder"):
            medcl("data", "split", mini, "--labeled", "1", "-o", target)
    assert sorted(p.name for p in mini.rglob("*")) == before


def test_no_command_writes_into_a_dataset_it_reads(mini: Path, tmp_path: Path):
    """infer, evaluate, data check --json and train refuse targets inside the dataset (links and '..' too)."""
    (tmp_path / "link").symlink_to(mini)
    image = mini / "imagesTr" / "hippocampus_001.nii.gz"
    labels = mini / "labelsTr"
    before = {p: p.read_bytes() for p in mini.rglob("*") if p.is_file()}
    attempts = [
        ("data", "check", mini, "--no-progress", "--json", tmp_path / "link" / "report.json"),
        ("infer", "--model", tmp_path / "none.pt", "--input", image, "--output", labels, "--overwrite"),
        ("evaluate", "--pred", labels, "--gt", labels, "-o", mini / "imagesTr" / ".." / "summary.json"),
        ("train", REPO / "configs/hippocampus/supervised.yaml", "--data", mini, "--runs", mini / "runs"),
    ]
    from medcl.cli import build_parser as cli_parser  # every command, not only `data`

    for argv in attempts:
        args = cli_parser().parse_args([str(a) for a in argv])
        with pytest.raises(DataError, match=r"is inside the dataset folder .*read-only"):
            args.func(args)
    assert {p: p.read_bytes() for p in mini.rglob("*") if p.is_file()} == before


def test_split_bad_amounts(mini: Path, tmp_path: Path):
    with pytest.raises(MedclError, match=r"labeled must be a count like 12 or a percentage"):
        medcl("data", "split", mini, "--labeled", "lots", "-o", tmp_path / "s.json")
    with pytest.raises(DataError, match=r"Asked for 2 labeled \+ 2 val \+ 0 test = 4 cases, .* only 3"):
        medcl("data", "split", mini, "--labeled", "2", "--val", "2", "-o", tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


def test_split_names_a_symlink_loop(mini: Path, tmp_path: Path):
    a, _ = link_loop(mini / "imagesTr")
    with pytest.raises(
        DataError, match=rf"{re.escape(str(a))} of case 'a' cannot be opened: symbolic link loop"
    ):
        medcl("data", "split", mini, "--labeled", "1", "-o", tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


def test_every_flag_has_help():
    parser = build_parser()
    data = parser._subparsers._group_actions[0].choices["data"]
    for name in ("check", "split"):
        sub = data._subparsers._group_actions[0].choices[name]
        for action in sub._actions:
            assert action.help and len(action.help) > 15, (name, action.dest)
