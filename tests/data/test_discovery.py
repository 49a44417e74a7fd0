"""Tests for medcl.data.discovery: case ids from file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.data.discovery import IMAGE_EXTENSIONS, case_id_from_path
from medcl.errors import DataError


def test_case_id_from_path():
    assert case_id_from_path("imagesTr/patient003_frame01_0000.nii.gz") == "patient003_frame01"
    assert case_id_from_path("/x/hippocampus_001.nii.gz") == "hippocampus_001"
    assert case_id_from_path(Path("a/b_0003.mha")) == "b"
    assert case_id_from_path("a/b.NRRD") == "b"
    assert case_id_from_path("labelsTr/case_0001.nii.gz", strip_channel=False) == "case_0001"
    assert case_id_from_path("x_001.nii") == "x_001"  # three digits is not a channel suffix
    assert set(IMAGE_EXTENSIONS) == {".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"}
    with pytest.raises(DataError, match=r"scan\.png does not have a supported image extension"):
        case_id_from_path("/x/scan.png")
