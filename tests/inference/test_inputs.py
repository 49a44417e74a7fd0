"""Tests for medcl.inference.inputs: how ``medcl infer --input`` items become cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medcl.errors import MedclError
from medcl.inference.inputs import collect_inputs


@pytest.fixture
def images(image_folder) -> Path:
    """A folder with two real Hippocampus images."""
    return image_folder(["hippocampus_001", "hippocampus_004"])


def test_a_file_given_twice_is_named(images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = images / "hippocampus_001.nii.gz"
    with pytest.raises(MedclError, match=r"hippocampus_001\.nii\.gz is given twice; give each image once"):
        collect_inputs([str(a), str(a)])
    # The same file spelled differently, or given both directly and through its folder or a list.
    monkeypatch.chdir(images)
    with pytest.raises(MedclError, match=rf"given twice \(as {a.name} and as {a}\)"):
        collect_inputs([a.name, str(a)])
    with pytest.raises(MedclError, match=r"hippocampus_001\.nii\.gz is given twice"):
        collect_inputs([str(images), str(a)])
    (images.parent / "list.txt").write_text(f"in/{a.name}\n")
    with pytest.raises(MedclError, match=r"hippocampus_001\.nii\.gz is given twice"):
        collect_inputs([str(images.parent / "list.txt"), str(a)])


def test_nnunet_channels_of_one_case_are_not_duplicates(images: Path) -> None:
    a = images / "hippocampus_001.nii.gz"
    shutil.copy(a, images / "x_0000.nii.gz")
    shutil.copy(a, images / "x_0001.nii.gz")
    cases = collect_inputs([str(images / "x_0000.nii.gz"), str(images / "x_0001.nii.gz")])
    assert [(c.name, [p.name for p in c.paths]) for c in cases] == [("x", ["x_0000.nii.gz", "x_0001.nii.gz"])]


def test_input_list_must_be_utf8(images: Path) -> None:
    listing = images.parent / "cases.txt"
    listing.write_bytes("# caf\u00e9 scans\nin/hippocampus_001.nii.gz\n".encode("latin-1"))
    with pytest.raises(MedclError) as info:
        collect_inputs([str(listing)])
    message = str(info.value)
    assert message.startswith(f"input list {listing} is not UTF-8 text (byte 0xe9 at offset 5)")
    assert "\n" not in message
    # A byte-order mark (as Windows editors write) is fine.
    listing.write_bytes("\ufeffin/hippocampus_001.nii.gz\nin/hippocampus_004.nii.gz\n".encode())
    assert [c.name for c in collect_inputs([str(listing)])] == ["hippocampus_001", "hippocampus_004"]


def test_a_folder_gives_its_images_without_hidden_copies(images: Path) -> None:
    # macOS writes "._NAME" AppleDouble files beside copied images; they are not images of the folder.
    (images / "._hippocampus_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (images / "notes.txt").write_text("not an image")
    cases = collect_inputs([str(images)])
    assert [(c.name, [p.name for p in c.paths]) for c in cases] == [
        ("hippocampus_001", ["hippocampus_001.nii.gz"]),
        ("hippocampus_004", ["hippocampus_004.nii.gz"]),
    ]
