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
milliseconds; :mod:`medcl.data.validate` reads the files.

Channel suffixes: a file name ending in ``_XXXX`` (four digits) before the extension is a channel file
(nnU-Net). In a folder where no file ends in ``_0000`` and ``dataset.json`` has no ``"channel_names"``, names
are taken as plain case ids, so an MSD dataset with ids like ``case_0001`` is not misread as channel 1 of
``case``.
"""

from __future__ import annotations

import difflib
import errno
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcl.errors import DataError

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

_CHANNEL_RE = re.compile(r"^(?P<id>.+)_(?P<channel>\d{4})$")
_SHOW_IDS = 5  # how many ids an error message lists before "..."


@dataclass(frozen=True)
class Case:
    """One case: its image file(s), one per channel, and its label file.

    Attributes:
        id: Case id, the file name without extension and channel suffix (``"hippocampus_001"``).
        images: One absolute path per channel, in channel order (nnU-Net ``_0000``, ``_0001``, ...).
        label: Absolute path of the label file, or ``None`` for an unlabeled case.
    """

    id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass
class DatasetInfo:
    """A dataset folder as read from its ``dataset.json`` and its image folders.

    Attributes:
        root: Absolute path of the dataset folder.
        name: ``"name"`` of ``dataset.json``, or the folder name.
        labels: Label value -> class name, values ``0 .. n-1`` with 0 the background.
        channel_names: Channel index -> name (``{0: "MRI"}``).
        cases: Labeled cases, sorted by id.
        unlabeled: Unlabeled cases (label ``None``), sorted by id.
        skipped: Files of image folders (``--images``, ``--unlabeled``) that are not images and were not read.
        image_folders: For a dataset made only of image folders (no ``dataset.json``, see
            :mod:`medcl.data.image_folder`): those folders; empty for a dataset folder.
    """

    root: Path
    name: str
    labels: dict[int, str]
    channel_names: dict[int, str]
    cases: list[Case]
    unlabeled: list[Case]
    skipped: list[Path] = field(default_factory=list)
    image_folders: list[Path] = field(default_factory=list)
    _index: dict[str, Case] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        """Class names in label-value order (index 0 is the background)."""
        return [self.labels[value] for value in sorted(self.labels)]

    @property
    def num_channels(self) -> int:
        """Number of image channels (files) per case."""
        return len(self.channel_names)

    @property
    def modality(self) -> str:
        """``"ct"`` if any channel is named CT, else ``"mri"`` (selects the intensity normalisation)."""
        return "ct" if any(name.strip().lower() == "ct" for name in self.channel_names.values()) else "mri"

    @property
    def all_ids(self) -> list[str]:
        """Ids of all cases: the labeled ones, then the unlabeled ones (each group sorted)."""
        return [c.id for c in self.cases] + [c.id for c in self.unlabeled]

    def case(self, case_id: str) -> Case:
        """Look up a case, labeled or unlabeled, by id.

        Args:
            case_id: The case id, e.g. ``"hippocampus_001"``.

        Returns:
            The case.

        Raises:
            DataError: The dataset has no such case; the message suggests close ids.
        """
        index = self._index
        if index is None or len(index) != len(self.cases) + len(self.unlabeled):
            index = {c.id: c for c in [*self.cases, *self.unlabeled]}
            self._index = index
        if case_id in index:
            return index[case_id]
        ids = self.all_ids
        close = difflib.get_close_matches(case_id, ids, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DataError(
            f"Dataset {self.root} has no case {case_id!r}; {hint}known ids include "
            f"{_preview(ids)} ({len(ids)} cases in total)."
        )


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
    ext = _image_extension(name)
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
    channel_names = _parse_channel_names(data, json_path)
    extensions = _parse_file_ending(data, json_path)
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
# dataset.json fields


def read_dataset_json(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise DataError(
            f"Dataset folder {json_path.parent} has no dataset.json; medcl expects the MSD or nnU-Net v2 "
            "layout (dataset.json, imagesTr/, labelsTr/)."
        )
    try:
        text = json_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"Cannot read {json_path}: {err}.") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{json_path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}."
        ) from err
    if not isinstance(data, dict):
        raise DataError(f"{json_path} must hold a JSON object, not a {type(data).__name__}.")
    return data


def _is_int_text(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value) is not None


def parse_labels(data: dict[str, Any], json_path: Path) -> dict[int, str]:
    """Label map as value -> name from either the MSD (value -> name) or nnU-Net (name -> value) form."""
    raw = data.get("labels")
    if raw is None:
        raise DataError(f"{json_path} has no 'labels' map (label value -> class name).")
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"'labels' in {json_path} must be a non-empty object, got {raw!r}.")
    if all(_is_int_text(k) and isinstance(v, str) for k, v in raw.items()):  # MSD
        labels = {int(k): v for k, v in raw.items()}
        names = list(labels.values())
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise DataError(
                f"'labels' in {json_path} gives the name {duplicates[0]!r} to more than one value."
            )
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):  # nnU-Net v2
        labels = {}
        for name, value in raw.items():
            if value in labels:
                raise DataError(
                    f"'labels' in {json_path} gives the value {value} to both {labels[value]!r} and {name!r}."
                )
            labels[value] = name
    elif any(isinstance(v, list) for v in raw.values()):
        raise DataError(
            f"'labels' in {json_path} uses nnU-Net region lists; medcl supports one integer per class only."
        )
    else:
        raise DataError(
            f'\'labels\' in {json_path} must map values to names (MSD: {{"0": "background"}}) or names to '
            f'integer values (nnU-Net v2: {{"background": 0}}), got {raw!r}.'
        )
    values = sorted(labels)
    if values != list(range(len(values))):
        raise DataError(
            f"Label values in {json_path} must be consecutive integers 0, 1, ..., n-1 with 0 the background; "
            f"got {values}."
        )
    return labels


def _parse_channel_names(data: dict[str, Any], json_path: Path) -> dict[int, str] | None:
    key = "channel_names" if "channel_names" in data else "modality"
    raw = data.get(key)
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw or not all(_is_int_text(k) for k in raw):
        raise DataError(
            f'{key!r} in {json_path} must map channel indices to names, like {{"0": "MRI"}}; got {raw!r}.'
        )
    channels = {int(k): str(v) for k, v in raw.items()}
    indices = sorted(channels)
    if indices != list(range(len(indices))):
        raise DataError(f"Channel indices of {key!r} in {json_path} must be 0, 1, ..., n-1; got {indices}.")
    return channels


def _parse_file_ending(data: dict[str, Any], json_path: Path) -> tuple[str, ...]:
    ending = data.get("file_ending")
    if ending is None:
        return IMAGE_EXTENSIONS
    if not isinstance(ending, str) or ending.lower() not in IMAGE_EXTENSIONS:
        raise DataError(
            f"'file_ending' {ending!r} in {json_path} is not supported; medcl reads "
            f"{', '.join(IMAGE_EXTENSIONS)}."
        )
    return (ending.lower(),)


# ---------------------------------------------------------------------------------------------------------
# files and folders


def _image_extension(name: str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> str | None:
    lower = name.lower()
    for ext in sorted(extensions, key=len, reverse=True):
        if lower.endswith(ext) and len(name) > len(ext):
            return ext
    return None


def _image_files(folder: Path, extensions: tuple[str, ...]) -> list[tuple[Path, str]]:
    """(path, stem) of the image files of a folder, sorted by name; hidden files are skipped."""
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
            ext = _image_extension(entry.name, extensions)
            if ext is not None:
                found.append((folder / entry.name, entry.name[: -len(ext)]))
    return sorted(found)


def _scan_images(
    folder: Path, extensions: tuple[str, ...], nnunet_names: bool
) -> dict[str, tuple[Path, ...]]:
    """Group the image files of a folder into cases: case id -> channel files in channel order."""
    files = _image_files(folder, extensions)
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
    for path, stem in _image_files(folder, extensions):
        if stem in labels:
            raise DataError(f"Label files {labels[stem]} and {path} both belong to case {stem!r}; keep one.")
        labels[stem] = path
    return labels


def _resolve_listed_image(root: Path, entry: str, where: str) -> Case:
    """Case of an image named in dataset.json; falls back to nnU-Net channel files ``x_0000`` for ``x``."""
    path = root / entry
    if path.is_file():
        return Case(id=case_id_from_path(path, strip_channel=False), images=(path,), label=None)
    ext = _image_extension(path.name)
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
    from medcl.data.image_folder import find_images

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


def _check_unique_ids(cases: list[Case]) -> None:
    seen: dict[str, Case] = {}
    for case in cases:
        if case.id in seen:
            raise DataError(
                f"Case id {case.id!r} is used twice, by {seen[case.id].images[0]} and {case.images[0]}; "
                "case ids must be unique across labeled and unlabeled images."
            )
        seen[case.id] = case


def unreadable_reason(path: Path) -> str | None:
    """Why a file cannot be opened, or ``None`` when it can (only its metadata is read, not its content).

    Args:
        path: An image or label file.

    Returns:
        ``"symbolic link loop (a.nii.gz -> b.nii.gz -> a.nii.gz)"``, ``"file does not exist"``, the system's
        reason (``"Permission denied"``), or ``None``.
    """
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            chain = _link_chain(Path(path))
            return f"symbolic link loop ({chain})" if chain else "symbolic link loop"
        if isinstance(err, FileNotFoundError):
            return "file does not exist"
        return err.strerror or str(err)
    return None


def _link_chain(path: Path, limit: int = 8) -> str:
    """The links followed from ``path`` until one repeats (``a.nii.gz -> b.nii.gz -> a.nii.gz``); empty if
    ``path`` itself is no link (the loop is in one of its folders)."""
    chain = [path]
    while len(chain) <= limit:
        try:
            target = Path(os.readlink(chain[-1]))
        except OSError:
            break
        chain.append(Path(os.path.normpath(chain[-1].parent / target)))
        if chain[-1] in chain[:-1]:
            break
    if len(chain) == 1:
        return ""
    return " -> ".join(p.name if p.parent == path.parent else str(p) for p in chain)


def _missing_reason(path: Path) -> str:
    """``"does not exist"`` or, for a path that exists but cannot be followed, why (a symbolic link loop)."""
    reason = unreadable_reason(path)
    if reason is None or reason == "file does not exist":
        return "does not exist"
    return f"cannot be opened: {reason}"


def _check_openable(cases: list[Case]) -> None:
    """Raise for the first image or label file that cannot be opened (one ``stat`` per file, no read)."""
    for case in cases:
        for path in (*case.images, *([case.label] if case.label is not None else [])):
            reason = unreadable_reason(path)
            if reason is not None:
                raise DataError(
                    f"File {path} of case {case.id!r} cannot be opened: {reason}; fix or remove it "
                    "(`medcl data check` lists every such file)."
                )


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


def _preview(ids: list[str], limit: int = _SHOW_IDS) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")
