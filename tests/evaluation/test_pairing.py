"""Pairing prediction and reference files by case id: duplicates, missing references, unpredicted cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.errors import DataError
from medcl.evaluation.pairing import FilePair, pair_folders
from medcl.evaluation.report import CaseProblem


def touch(folder: Path, *names: str) -> None:
    """Empty files: pairing looks at names only, it reads no file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_every_predicted_id_is_a_pair_or_a_problem(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    touch(pred, "a.nii.gz", "b.nii.gz", "b.nrrd", "c.nii.gz", "e.mha", ".hidden.nii.gz", "notes.txt")
    touch(gt, "a.nii.gz", "b.nii.gz", "d.nii.gz", "e.nii.gz", "e.nii")
    pairing = pair_folders(pred, gt)
    assert (pairing.pred_dir, pairing.gt_dir) == (pred.resolve(), gt.resolve())
    assert [entry.case for entry in pairing.cases] == ["a", "b", "c", "e"]
    a, b, c, e = pairing.cases
    assert a == FilePair("a", pred.resolve() / "a.nii.gz", gt.resolve() / "a.nii.gz")
    assert (
        isinstance(b, CaseProblem) and b.message == "several files for one case (b.nii.gz, b.nrrd); keep one."
    )
    assert isinstance(c, CaseProblem) and c.message.startswith("prediction has no reference label in")
    assert (
        isinstance(e, CaseProblem) and e.message == "several files for one case (e.nii, e.nii.gz); keep one."
    )
    assert pairing.not_predicted == ["d"]


def test_folder_errors(tmp_path: Path) -> None:
    touch(tmp_path / "gt", "a.nii.gz")
    with pytest.raises(DataError, match="Prediction folder .*missing does not exist"):
        pair_folders(tmp_path / "missing", tmp_path / "gt")
    with pytest.raises(DataError, match="--pred and --gt are the same folder"):
        pair_folders(tmp_path / "gt", tmp_path / "gt")
    touch(tmp_path / "empty", "notes.txt")
    with pytest.raises(DataError, match="holds no prediction file"):
        pair_folders(tmp_path / "empty", tmp_path / "gt")
