"""Label maps: geometry messages, labels from dataset.json or from the reference files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcl.data.volume import read_volume
from medcl.errors import DataError
from medcl.evaluation.label_maps import geometry_mismatch, infer_labels, load_labels

LABELS = {0: "background", 1: "Anterior", 2: "Posterior"}


def test_geometry_mismatch_names_what_differs() -> None:
    ref = np.eye(4)
    assert geometry_mismatch(ref + 1e-4, ref) == ""
    spacing = np.diag([1.0, 1.0, 2.0, 1.0])
    assert geometry_mismatch(spacing, ref) == "spacing (1, 1, 2) vs (1, 1, 1)"
    moved = np.eye(4)
    moved[:3, 3] = (0, 0, 0.5)
    assert geometry_mismatch(moved, ref) == "origin (0, 0, 0.5) vs (0, 0, 0)"
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    message = geometry_mismatch(flipped, ref)
    assert (
        message.startswith("direction (-1, 0, 0, 0, 1, 0, 0, 0, 1) vs (1, 0, 0") and "spacing" not in message
    )


def test_labels_from_dataset_json_or_reference_files(hippocampus: Path, tmp_path: Path) -> None:
    assert load_labels(hippocampus / "dataset.json") == LABELS
    assert load_labels(hippocampus) == LABELS
    nnunet = tmp_path / "dataset.json"
    nnunet.write_text(json.dumps({"labels": {"background": 0, "RV": 1}}))
    assert load_labels(nnunet) == {0: "background", 1: "RV"}
    with pytest.raises(DataError, match="does not exist"):
        load_labels(tmp_path / "missing.json")
    gt = tmp_path / "gt"
    gt.mkdir()
    array, affine = read_volume(hippocampus / "labelsTr" / "hippocampus_001.nii.gz")
    nib.save(nib.Nifti1Image(array, affine), gt / "one.nii.gz")
    (gt / "notes.txt").write_text("ignored")
    assert infer_labels(gt) == {0: "background", 1: "1", 2: "2"}
