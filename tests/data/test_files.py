"""Tests for medcl.data.files: why a file cannot be opened, without reading it."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.data.cases import Case
from medcl.data.files import _check_openable, unreadable_reason
from medcl.errors import DataError


def test_unreadable_reason(tmp_path: Path):
    ok = tmp_path / "ok.nii.gz"
    ok.write_bytes(b"")
    assert unreadable_reason(ok) is None
    assert unreadable_reason(tmp_path / "none.nii.gz") == "file does not exist"
    (tmp_path / "a.nii.gz").symlink_to("b.nii.gz")
    (tmp_path / "b.nii.gz").symlink_to("a.nii.gz")
    assert unreadable_reason(tmp_path / "a.nii.gz") == "symbolic link loop (a.nii.gz -> b.nii.gz -> a.nii.gz)"


def test_check_openable_names_the_file_and_its_case(tmp_path: Path):
    image = tmp_path / "x.nii.gz"
    image.write_bytes(b"")
    _check_openable([Case("x", (image,), None)])
    with pytest.raises(
        DataError, match=r"File .*y\.nii\.gz of case 'x' cannot be opened: file does not exist"
    ):
        _check_openable([Case("x", (image,), tmp_path / "y.nii.gz")])
