"""Tests for medcl.data.check_report: the table and the JSON of `medcl data check`."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medcl.data.check_report import format_report, reports_to_dict
from medcl.data.dataset import load_dataset
from medcl.data.validate import check_dataset

BAD = "hippocampus_004"  # the case the test breaks (one of the `mini` fixture's)


def test_format_report_and_json(mini: Path):
    path = mini / "labelsTr" / f"{BAD}.nii.gz"
    label = nib.load(str(path))
    array = np.asarray(label.dataobj).copy()
    array[0, 0, 0] = 7  # a value dataset.json does not list
    nib.save(nib.Nifti1Image(array, label.affine), str(path))
    info = load_dataset(mini)
    reports = check_dataset(info, progress=False)
    text = format_report(reports, info)
    lines = text.splitlines()
    assert lines[0].split() == ["case", "severity", "file", "message"]
    assert lines[1].split()[:3] == [BAD, "error", f"labelsTr/{BAD}.nii.gz"]
    assert lines[1].endswith("label values [7] are not in dataset.json labels [0, 1, 2].")
    assert lines[-1] == "3 cases checked: 1 errors, 0 warnings"
    data = json.loads(json.dumps(reports_to_dict(reports, info)))
    assert (data["cases_checked"], data["errors"], data["warnings"]) == (3, 1, 0)
    bad = next(c for c in data["cases"] if c["case"] == BAD)
    assert bad["problems"][0]["file"] == str(path)
    assert bad["labels_found"] == [0, 1, 2, 7]
