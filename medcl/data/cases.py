"""The records a dataset is made of: :class:`Case` (one case's files) and :class:`DatasetInfo` (the dataset).

They are built by :func:`medcl.data.dataset.load_dataset` (a dataset folder with ``dataset.json``) and
:func:`medcl.data.image_folder.load_image_folders` (folders of images); everything downstream (splits,
sampling, checks, inference inputs) reads them. Both hold paths only; no image is opened.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from medcl.errors import DataError

__all__ = ["Case", "DatasetInfo"]

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


def _check_unique_ids(cases: list[Case]) -> None:
    seen: dict[str, Case] = {}
    for case in cases:
        if case.id in seen:
            raise DataError(
                f"Case id {case.id!r} is used twice, by {seen[case.id].images[0]} and {case.images[0]}; "
                "case ids must be unique across labeled and unlabeled images."
            )
        seen[case.id] = case


def _preview(ids: list[str], limit: int = _SHOW_IDS) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")
