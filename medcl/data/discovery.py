"""Image files of a folder grouped into cases by name: extensions, case ids, nnU-Net channel suffixes.

A case id is a file name without its extension (:data:`IMAGE_EXTENSIONS`) and, for image files, without an
nnU-Net channel suffix ``_XXXX`` (four digits): ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz`` are the two
channels of the case ``CASE``. In a folder where no file ends in ``_0000`` (and unless the dataset uses
nnU-Net names), names are taken as plain case ids, so an MSD dataset with ids like ``case_0001`` is not
misread as channel 1 of ``case``. Hidden files are skipped. Only names are looked at here; no image is opened.

:func:`image_files` is the one listing of a folder's image files (training data, ``evaluate``'s folders,
``infer`` inputs); the underscored helpers are shared with :mod:`medcl.data.dataset` and
:mod:`medcl.data.image_folder`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from medcl.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "case_id_from_path", "image_extension", "image_files"]

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

_CHANNEL_RE = re.compile(r"^(?P<id>.+)_(?P<channel>\d{4})$")


def case_id_from_path(path: str | Path, *, strip_channel: bool = True) -> str:
    """Case id of an image or label file: its name without extension and nnU-Net channel suffix.

    Args:
        path: A file path such as ``imagesTr/patient003_frame01_0000.nii.gz``.
        strip_channel: Remove a trailing ``_XXXX`` (four digits) channel suffix. Set it to ``False`` for label
            files, which carry no channel suffix.

    Returns:
        The case id (``"patient003_frame01"``).

    Raises:
        DataError: The file does not have a supported image extension.
    """
    name = Path(path).name
    ext = image_extension(name)
    if ext is None:
        raise DataError(
            f"File {path} does not have a supported image extension ({', '.join(IMAGE_EXTENSIONS)})."
        )
    stem = name[: -len(ext)]
    if strip_channel:
        match = _CHANNEL_RE.match(stem)
        if match:
            return match.group("id")
    return stem


def image_extension(name: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> str | None:
    lower = name.lower()
    for ext in sorted(extensions, key=len, reverse=True):
        if lower.endswith(ext) and len(name) > len(ext):
            return ext
    return None


def image_files(folder: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[tuple[Path, str]]:
    """(path, stem) of the image files of a folder, sorted by name; hidden files (``.*``, e.g. macOS ``._``
    copies) are skipped. The one folder listing of training data, ``infer`` inputs and ``evaluate`` folders."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_file = entry.is_file()
            except OSError:
                # A link that cannot be followed (a loop, no permission) stays a file of its case:
                # load_dataset names it in an error, `medcl data check` reports it in that case's row.
                is_file = entry.is_symlink()
            if not is_file:
                continue
            ext = image_extension(entry.name, extensions)
            if ext is not None:
                found.append((folder / entry.name, entry.name[: -len(ext)]))
    return sorted(found)


def _scan_images(
    folder: Path, extensions: tuple[str, ...], nnunet_names: bool
) -> dict[str, tuple[Path, ...]]:
    """Group the image files of a folder into cases: case id -> channel files in channel order."""
    files = image_files(folder, extensions)
    use_suffix = nnunet_names or any(
        (m := _CHANNEL_RE.match(stem)) is not None and m.group("channel") == "0000" for _, stem in files
    )
    by_case: dict[str, dict[int | None, Path]] = {}
    for path, stem in files:
        match = _CHANNEL_RE.match(stem) if use_suffix else None
        case_id, channel = (match.group("id"), int(match.group("channel"))) if match else (stem, None)
        channels = by_case.setdefault(case_id, {})
        if (
            channel in channels
            or (channel is None and channels)
            or (channel is not None and None in channels)
        ):
            other = next(iter(channels.values())) if channel not in channels else channels[channel]
            raise DataError(f"Files {other} and {path} both belong to case {case_id!r}; keep only one.")
        channels[channel] = path
    cases = {}
    for case_id, channels in by_case.items():
        if None in channels:
            cases[case_id] = (channels[None],)
            continue
        present = sorted(channels)  # type: ignore[type-var]
        missing = [i for i in range(present[-1] + 1) if i not in channels]
        if missing:
            have = ", ".join(f"_{i:04d}" for i in present)
            raise DataError(
                f"Case {case_id!r} in {folder} has channel files {have} but no _{missing[0]:04d}; channels "
                "must be numbered _0000, _0001, ... without gaps."
            )
        cases[case_id] = tuple(channels[i] for i in present)
    return cases


def _scan_labels(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    labels: dict[str, Path] = {}
    for path, stem in image_files(folder, extensions):
        if stem in labels:
            raise DataError(f"Label files {labels[stem]} and {path} both belong to case {stem!r}; keep one.")
        labels[stem] = path
    return labels
