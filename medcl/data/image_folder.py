"""Folders of unlabeled images without ``dataset.json``: label-free pretraining and extra unlabeled scans.

``medcl pretrain --images DIR``, ``medcl train --unlabeled DIR`` and ``medcl data check --images DIR`` take
any folder of scans, searched recursively:

* every file with an image extension (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``) is one case;
  nnU-Net channel files of one folder (``CASE_0000``, ``CASE_0001``, ...) form one multi-channel case;
* every folder holding a DICOM series is one case. Which files form the series is GDCM's decision
  (SimpleITK's ``ImageSeriesReader``), asked only for folders holding ``.dcm``/``.ima`` or extension-less
  files, so a folder of NIfTI files is never scanned for DICOM headers;
* hidden files and folders are ignored; any other file (notes, spreadsheets, a ``dataset.json``) is
  recorded as skipped, so ``medcl data check --images`` can say what it did not read.

Case ids are paths relative to the folder, without extension: ``scan1``, ``site_a/scan7``, ``patient3/ct``
(a DICOM series folder). With several folders every id starts with its folder's name (``2023/scan1``), so
the same file name in two folders does not clash. Only names and headers are looked at here; reading the
voxels (and reporting unreadable or non-3D files, naming them) is :mod:`medcl.data.validate`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from medcl.data.cases import Case, DatasetInfo, _check_unique_ids
from medcl.data.discovery import IMAGE_EXTENSIONS, _scan_images, image_extension
from medcl.data.files import _check_openable
from medcl.errors import DataError

#: Label map of an image-only dataset. Nothing is segmented from it (pretraining never reads labels); the
#: network still needs an output layer, and fine-tuning drops it when the labeled dataset's classes differ.
PLACEHOLDER_LABELS = {0: "background", 1: "foreground"}

_DICOM_CANDIDATE_SUFFIXES = ("", ".dcm", ".ima", ".dicom")


def find_images(
    folder: str | Path,
    *,
    extensions: tuple[str, ...] | None = None,
    nnunet_names: bool = False,
    prefix: str = "",
) -> tuple[list[Case], list[Path]]:
    """The image cases of a folder and its sub-folders, and the files that were not images.

    Args:
        folder: The folder to search (a single image file is accepted too: one case).
        extensions: Image extensions to accept (default: every extension medcl reads).
        nnunet_names: Group ``_XXXX`` channel files even in folders without a ``_0000`` file (nnU-Net v2).
        prefix: Put in front of every case id (``"2023/"``).

    Returns:
        ``(cases, skipped)``: :class:`~medcl.data.dataset.Case` objects without labels, sorted by id, and the
        non-image files found.

    Raises:
        DataError: The folder does not exist, a folder holds several DICOM series, or two files of a folder
            claim the same case.
    """
    extensions = extensions or IMAGE_EXTENSIONS
    root = Path(folder).expanduser()
    if root.is_file():
        ext = image_extension(root.name, extensions)
        if ext is None:
            raise DataError(
                f"{root} is not an image file ({', '.join(extensions)}); for a DICOM series give its folder."
            )
        return [Case(id=prefix + root.name[: -len(ext)], images=(root,), label=None)], []
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist or is not a folder.")

    cases, skipped = [], []
    visited: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = here.resolve()
        if real in visited:  # a symbolic link back up the tree: searched once
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = here.relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        for case_id, paths in sorted(_scan_images(here, extensions, nnunet_names).items()):
            cases.append(Case(id=f"{prefix}{rel}{case_id}", images=paths, label=None))
        others = [
            f for f in sorted(filenames) if not f.startswith(".") and image_extension(f, extensions) is None
        ]
        candidates = [f for f in others if _maybe_dicom(f)]
        if candidates and _dicom_series(here):
            series_id = rel.rstrip("/") or root.name
            cases.append(Case(id=f"{prefix}{series_id}", images=(here,), label=None))
            others = [f for f in others if f not in candidates]
        skipped += [here / f for f in others]
    return sorted(cases, key=lambda c: c.id), skipped


def load_image_folders(
    folders: Sequence[str | Path], *, modality: str | None = None, keep_unreadable: bool = False
) -> DatasetInfo:
    """A :class:`~medcl.data.dataset.DatasetInfo` of unlabeled cases from folders of images (no labels).

    Args:
        folders: One or more folders (or image files), each searched recursively (see the module docstring).
        modality: ``"ct"`` or ``"mri"``, which names the channels so that ``DatasetInfo.modality`` selects
            the intensity normalisation; ``None`` names them ``image`` (MRI normalisation unless the config
            says otherwise; training asks for ``--modality``).
        keep_unreadable: Keep files that cannot be opened (a symbolic link loop, no permission) instead of
            raising, so that ``medcl data check --images`` reports each one in its row.

    Returns:
        A dataset with no labeled case, every image unlabeled, :data:`PLACEHOLDER_LABELS` as labels, and the
        non-image files in ``skipped``.

    Raises:
        DataError: No folder given, a folder is missing or holds no image, two images get the same case id,
            cases have different channel counts, or (unless ``keep_unreadable``) a file cannot be opened.
    """
    if not folders:
        raise DataError("No image folder given; pass --images DIR (repeatable).")
    roots = [Path(f).expanduser() for f in folders]
    cases, skipped = [], []
    for root in roots:
        prefix = f"{root.name}/" if len(roots) > 1 else ""
        found, extra = find_images(root, prefix=prefix)
        if not found:
            raise DataError(
                f"Image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) and no DICOM series "
                f"(searched recursively{f'; {len(extra)} other file(s) skipped, e.g. {extra[0]}' if extra else ''})."
            )
        cases += found
        skipped += extra
    _check_unique_ids(cases)
    channels = {len(c.images) for c in cases}
    if len(channels) > 1:
        one = next(c for c in cases if len(c.images) == min(channels))
        other = next(c for c in cases if len(c.images) == max(channels))
        raise DataError(
            f"Images have different channel counts: {one.id!r} has {len(one.images)} file(s), {other.id!r} has "
            f"{len(other.images)} ({', '.join(p.name for p in other.images)}); every case needs the same channels."
        )
    if not keep_unreadable:
        _check_openable(cases)
    name = {"ct": "CT", "mri": "MRI"}.get(modality or "", "image")
    n = channels.pop()
    resolved = [r.resolve() for r in roots]
    return DatasetInfo(
        root=resolved[0] if resolved[0].is_dir() else resolved[0].parent,
        name="+".join(r.name for r in resolved),
        labels=dict(PLACEHOLDER_LABELS),
        channel_names={i: (f"channel_{i}" if name == "image" and n > 1 else name) for i in range(n)},
        cases=[],
        unlabeled=sorted(cases, key=lambda c: c.id),
        skipped=skipped,
        image_folders=resolved,
    )


def _maybe_dicom(name: str) -> bool:
    """Whether a file name may be a DICOM file: ``.dcm``/``.ima``, no extension, or a UID (``1.2.840.1.7``)."""
    suffix = Path(name).suffix.lower()
    return suffix in _DICOM_CANDIDATE_SUFFIXES or suffix[1:].isdigit()


def _dicom_series(folder: Path) -> list[str]:
    """Series instance UIDs GDCM finds in ``folder`` (not its sub-folders); ITK's warnings are kept quiet."""
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "No Series were found" for every non-DICOM folder
    try:
        ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if len(ids) > 1:
        raise DataError(
            f"Folder {folder} holds {len(ids)} DICOM series ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''}); "
            "medcl reads one series per folder: move each series into its own folder."
        )
    return ids
