"""Find the cases of a dataset folder: which image files and which label file belong to each case.

Two layouts are accepted, both with a ``dataset.json`` at the top of the folder:

* **MSD** (Medical Segmentation Decathlon): ``"labels"`` maps values to names (``{"0": "background",
  "1": "Anterior"}``), ``"modality"`` names the channels, and a ``"training"`` list gives each case as
  ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``; an optional ``"test"`` list names
  unlabeled images.
* **nnU-Net v2**: ``"labels"`` maps names to values (``{"background": 0, "RV": 1}``), ``"channel_names"``
  names the channels, ``"file_ending"`` gives the extension, and there is no ``"training"`` list: images are
  found in ``imagesTr/`` as ``CASE_0000<ext>``, ``CASE_0001<ext>``, ... (one file per channel) and labels in
  ``labelsTr/`` as ``CASE<ext>``.

Where cases come from:

* Labeled cases are the ``"training"`` list when there is one, otherwise every image in ``imagesTr/`` that
  has a label file of the same case id in ``labelsTr/``.
* Unlabeled cases are the ``"test"`` list when it is not empty, otherwise the images in ``imagesTs/`` if that
  folder exists, plus the images of ``unlabeled_dir`` when one is given. Images in ``imagesTr/`` without a
  label are **not dropped**: they become unlabeled cases too. With a ``"training"`` list, that list is
  authoritative for labels, so an image of ``imagesTr/`` that the list does not name is unlabeled even if
  ``labelsTr/`` happens to hold a file for it.

Channel names come from ``"channel_names"`` (nnU-Net) or ``"modality"`` (MSD); when both are absent they are
``{0: "image"}`` (or ``channel_0``, ``channel_1``, ... for several channels).

Only file names are looked at here (no image is opened), so loading a dataset of a few hundred cases takes
milliseconds; :mod:`medcl.data.validate` reads the files. The pieces live beside this module:
:mod:`medcl.data.cases` (the :class:`Case` and :class:`DatasetInfo` records), :mod:`medcl.data.dataset_json`
(the fields of ``dataset.json``), :mod:`medcl.data.discovery` (image files grouped into cases by name, channel
suffixes) and :mod:`medcl.data.files` (whether a file can be opened).

Channel suffixes: a file name ending in ``_XXXX`` (four digits) before the extension is a channel file
(nnU-Net). In a folder where no file ends in ``_0000`` and ``dataset.json`` has no ``"channel_names"``, names
are taken as plain case ids, so an MSD dataset with ids like ``case_0001`` is not misread as channel 1 of
``case``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcl.data.cases import Case, DatasetInfo, _check_unique_ids
from medcl.data.dataset_json import parse_channel_names, parse_file_ending, parse_labels, read_dataset_json
from medcl.data.discovery import (
    IMAGE_EXTENSIONS,
    _scan_images,
    _scan_labels,
    case_id_from_path,
    image_extension,
)
from medcl.data.files import _check_openable, _missing_reason
from medcl.data.image_folder import find_images
from medcl.errors import DataError

# Case, DatasetInfo and IMAGE_EXTENSIONS are defined beside this module and importable from here too.
__all__ = [
    "IMAGE_EXTENSIONS",
    "Case",
    "DatasetInfo",
    "dataset_roots_of",
    "load_dataset",
    "refuse_writing_inside",
]


def refuse_writing_inside(dataset: str | Path, target: str | Path, what: str) -> None:
    """Datasets are read-only: fail when ``target`` lies inside the folder ``dataset`` (or is it).

    Both paths are resolved first, so symbolic links and ``..`` cannot sneak a write into the dataset.

    Args:
        dataset: A dataset folder a command reads.
        target: A file or folder the command is about to write.
        what: How the command names the target (e.g. ``"--output"``), for the message.

    Raises:
        DataError: ``target`` is inside ``dataset``.
    """
    root = Path(dataset).expanduser().resolve()
    out = Path(target).expanduser().resolve()
    if out.is_relative_to(root):
        raise DataError(
            f"{what} {out} is inside the dataset folder {root}; datasets are kept read-only: choose a path "
            "outside it"
        )


def dataset_roots_of(paths: list[Path]) -> set[Path]:
    """The dataset folders (ancestors holding a ``dataset.json``) that image files belong to."""
    roots = set()
    for path in paths:
        for parent in Path(path).expanduser().resolve().parents:
            if (parent / "dataset.json").is_file():
                roots.add(parent)
                break
    return roots


def load_dataset(
    root: str | Path,
    unlabeled_dir: str | Path | Sequence[str | Path] | None = None,
    *,
    keep_unreadable: bool = False,
) -> DatasetInfo:
    """Read ``dataset.json`` and pair image and label files, without opening any image.

    Args:
        root: The dataset folder (MSD or nnU-Net v2 layout, see the module docstring).
        unlabeled_dir: Extra folder(s) of unlabeled images, absolute or relative to ``root``, searched
            recursively (DICOM series folders included, see :mod:`medcl.data.image_folder`); with several
            folders each case id starts with its folder's name.
        keep_unreadable: Keep image and label files that cannot be opened (a symbolic link loop such as
            ``a.nii.gz -> b.nii.gz -> a.nii.gz``, a link target without read permission) in their cases
            instead of raising, so that ``medcl data check`` reports each one as an error of its case.

    Returns:
        The dataset: label map, channel names, labeled and unlabeled cases.

    Raises:
        DataError: The folder, ``dataset.json`` or a file it names is missing or malformed, ``imagesTr`` holds
            no images, a case's channel files have a gap, two files claim the same case id, or (unless
            ``keep_unreadable``) a file of a case cannot be opened.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"Dataset folder {root} does not exist.")
    if not root.is_dir():
        raise DataError(f"Dataset path {root} is not a folder; give the folder that holds dataset.json.")
    root = root.resolve()
    json_path = root / "dataset.json"
    data = read_dataset_json(json_path)

    labels = parse_labels(data, json_path)
    channel_names = parse_channel_names(data, json_path)
    extensions = parse_file_ending(data, json_path)
    nnunet_names = "channel_names" in data

    training = data.get("training")
    if training is not None:
        labeled, extra = _cases_from_training_list(root, training, json_path, extensions, nnunet_names)
    else:
        labeled, extra = _cases_from_folders(root, extensions, nnunet_names)
    skipped: list[Path] = []
    unlabeled = extra + _unlabeled_cases(
        root, data, json_path, extensions, nnunet_names, unlabeled_dir, skipped
    )

    _check_unique_ids(labeled + unlabeled)
    if channel_names is None:
        num = len((labeled + unlabeled)[0].images)
        channel_names = {0: "image"} if num == 1 else {i: f"channel_{i}" for i in range(num)}
    _check_channel_counts(labeled + unlabeled, channel_names, json_path)
    if not keep_unreadable:
        _check_openable(labeled + unlabeled)

    name = data.get("name")
    return DatasetInfo(
        root=root,
        name=name if isinstance(name, str) and name else root.name,
        labels=labels,
        channel_names=channel_names,
        cases=sorted(labeled, key=lambda c: c.id),
        unlabeled=sorted(unlabeled, key=lambda c: c.id),
        skipped=skipped,
    )


# ---------------------------------------------------------------------------------------------------------
# where cases come from


def _resolve_listed_image(root: Path, entry: str, where: str) -> Case:
    """Case of an image named in dataset.json; falls back to nnU-Net channel files ``x_0000`` for ``x``."""
    path = root / entry
    if path.is_file():
        return Case(id=case_id_from_path(path, strip_channel=False), images=(path,), label=None)
    ext = image_extension(path.name)
    if ext is not None and path.parent.is_dir():
        stem = path.name[: -len(ext)]
        channels = []
        while (candidate := path.parent / f"{stem}_{len(channels):04d}{ext}").is_file():
            channels.append(candidate)
        if channels:
            return Case(id=stem, images=tuple(channels), label=None)
    raise DataError(f"{where} names the image {path}, which {_missing_reason(path)}.")


def _cases_from_training_list(
    root: Path, training: Any, json_path: Path, extensions: tuple[str, ...], nnunet_names: bool
) -> tuple[list[Case], list[Case]]:
    """Labeled cases from the MSD ``"training"`` list, plus unlisted images of imagesTr as unlabeled."""
    if not isinstance(training, list):
        raise DataError(f'\'training\' in {json_path} must be a list of {{"image", "label"}} entries.')
    cases = []
    for index, entry in enumerate(training):
        where = f"Entry {index} of 'training' in {json_path}"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise DataError(f"{where} must be an object with an 'image' path, got {entry!r}.")
        if not isinstance(entry.get("label"), str):
            raise DataError(
                f"{where} has no 'label' path; list unlabeled images under 'test' or in imagesTs/."
            )
        case = _resolve_listed_image(root, entry["image"], where)
        label = root / entry["label"]
        if not label.is_file():
            raise DataError(f"{where} names the label {label}, which {_missing_reason(label)}.")
        cases.append(Case(id=case.id, images=case.images, label=label))
    if not cases:
        raise DataError(f"'training' in {json_path} is empty; list at least one labeled case.")
    listed = {c.id for c in cases}
    listed_files = {p for c in cases for p in c.images}
    extra = []
    images_dir = root / "imagesTr"
    if images_dir.is_dir():
        for case_id, images in _scan_images(images_dir, extensions, nnunet_names).items():
            if case_id not in listed and not listed_files.intersection(images):
                extra.append(Case(id=case_id, images=images, label=None))
    return cases, extra


def _cases_from_folders(
    root: Path, extensions: tuple[str, ...], nnunet_names: bool
) -> tuple[list[Case], list[Case]]:
    """Labeled cases paired by id from imagesTr/ and labelsTr/; images without a label are unlabeled."""
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise DataError(
            f"Dataset folder {root} has no imagesTr/ folder and dataset.json has no 'training' list."
        )
    images = _scan_images(images_dir, extensions, nnunet_names)
    if not images:
        raise DataError(f"{images_dir} holds no images with a supported extension ({', '.join(extensions)}).")
    labels = _scan_labels(labels_dir, extensions) if labels_dir.is_dir() else {}
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DataError(
            f"Label file {labels[orphans[0]]} has no image in {images_dir} (expected {orphans[0]}_0000<ext> or "
            f"{orphans[0]}<ext>); {len(orphans)} label file(s) without an image."
        )
    labeled, unlabeled = [], []
    for case_id, paths in images.items():
        label = labels.get(case_id)
        (labeled if label is not None else unlabeled).append(Case(id=case_id, images=paths, label=label))
    if not labeled:
        raise DataError(
            f"No image of {images_dir} has a label file in {labels_dir} (labels are named CASE<ext>, "
            "images CASE_0000<ext> or CASE<ext>)."
        )
    return labeled, unlabeled


def _unlabeled_cases(
    root: Path,
    data: dict[str, Any],
    json_path: Path,
    extensions: tuple[str, ...],
    nnunet_names: bool,
    unlabeled_dir: str | Path | Sequence[str | Path] | None,
    skipped: list[Path],
) -> list[Case]:
    cases = []
    test = data.get("test")
    if test:
        if not isinstance(test, list):
            raise DataError(f"'test' in {json_path} must be a list of image paths.")
        for index, entry in enumerate(test):
            where = f"Entry {index} of 'test' in {json_path}"
            if isinstance(entry, dict):
                entry = entry.get("image")
            if not isinstance(entry, str):
                raise DataError(f"{where} must be an image path, got {entry!r}.")
            cases.append(_resolve_listed_image(root, entry, where))
    elif (root / "imagesTs").is_dir():
        scanned = _scan_images(root / "imagesTs", extensions, nnunet_names)
        cases += [Case(id=i, images=p, label=None) for i, p in scanned.items()]
    folders = (
        []
        if unlabeled_dir is None
        else [unlabeled_dir]
        if isinstance(unlabeled_dir, str | Path)
        else list(unlabeled_dir)
    )
    for given in folders:
        folder = Path(given).expanduser()
        folder = folder if folder.is_absolute() else root / folder
        if not folder.is_dir():
            raise DataError(f"Unlabeled image folder {folder} does not exist or is not a folder.")
        prefix = f"{folder.name}/" if len(folders) > 1 else ""
        found, extra = find_images(folder, extensions=extensions, nnunet_names=nnunet_names, prefix=prefix)
        if not found:
            raise DataError(
                f"Unlabeled image folder {folder} holds no images ({', '.join(extensions)}) and no DICOM series "
                "(searched recursively)."
            )
        cases += found
        skipped += extra
    return cases


def _check_channel_counts(cases: list[Case], channel_names: dict[int, str], json_path: Path) -> None:
    for case in cases:
        if len(case.images) != len(channel_names):
            files = ", ".join(p.name for p in case.images)
            hint = (
                " (a multi-channel volume must be split into one 3D file per channel, CASE_0000, CASE_0001, ...)"
                if len(case.images) == 1
                else ""
            )
            raise DataError(
                f"Case {case.id!r} has {len(case.images)} image file(s) ({files}) but {json_path} names "
                f"{len(channel_names)} channel(s){hint}."
            )
