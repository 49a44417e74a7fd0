"""Atomic text writes: the content lands whole, with a plain file's mode, and a failed write keeps the old file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medcl.runtime import files
from medcl.runtime.files import write_text_atomic


def test_writes_utf8_text_verbatim_creates_the_folder_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "new" / "report.csv"
    text = "a,b\r\nµ,ü\n"  # newlines kept as given (csv writes \r\n)
    assert write_text_atomic(target, text) == target
    assert target.read_bytes() == text.encode("utf-8")
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.csv"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_a_write_that_fails_keeps_the_old_content_and_removes_its_temporary(tmp_path, monkeypatch) -> None:
    target = tmp_path / "splits.json"
    target.write_text("old\n")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["splits.json"]
