"""Make a seeded split of a dataset and save it: ``medcl data split`` and a workflow's ``split`` stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medcl.errors import DataError

if TYPE_CHECKING:
    from medcl.data.dataset import DatasetInfo
    from medcl.data.splits import Splits


@dataclass
class SplitResult:
    """A saved split.

    Attributes:
        info: The dataset that was split.
        splits: The case ids per subset (``splits.meta`` says how they were drawn).
        path: The splits file, absolute.
    """

    info: DatasetInfo
    splits: Splits
    path: Path


def split_dataset(
    data: str | Path,
    output: str | Path,
    *,
    labeled: int | str,
    val: int | str = 0,
    test: int | str = 0,
    seed: int = 0,
    group_by: str | None = None,
    unlabeled_dir: str | None = None,
    overwrite: bool = False,
    option: str = "-o",
) -> SplitResult:
    """Draw test, val and labeled cases of ``data`` (:func:`medcl.data.splits.make_splits`), save them.

    Args:
        data: The dataset folder (MSD or nnU-Net layout).
        output: The splits file to write.
        labeled: Labeled cases or groups: a count or a percentage (``"10%"``).
        val: Validation cases or groups, as ``labeled``.
        test: Test cases or groups, as ``labeled``.
        seed: Seed of the draw; the same seed gives the same splits.
        group_by: A regular expression keeping cases with the same match in the same subset.
        unlabeled_dir: An extra folder of unlabeled images (absolute, or relative to ``data``).
        overwrite: Replace an existing splits file.
        option: How the caller spells ``output`` in messages (a flag, a file key).

    Returns:
        The dataset, the splits and the absolute path of the file.

    Raises:
        MedclError: The dataset cannot be loaded, the amounts do not fit, or ``output`` is inside the
            dataset, is a folder, or exists without ``overwrite``.
    """
    from medcl.data.dataset import load_dataset, refuse_writing_inside
    from medcl.data.splits import make_splits

    info = load_dataset(data, unlabeled_dir=unlabeled_dir)
    path = Path(output).expanduser().resolve()
    refuse_writing_inside(info.root, path, option)
    if path.is_dir():
        raise DataError(f"Output {path} is a folder; give a file name such as {path / 'splits.json'}.")
    if path.exists() and not overwrite:
        raise DataError(f"Splits file {path} already exists; pass --force to overwrite it.")
    splits = make_splits(info, labeled=labeled, val=val, test=test, seed=seed, group_by=group_by)
    splits.save(path)
    return SplitResult(info, splits, path)


def subset_sizes(splits: Splits) -> dict[str, int]:
    """Cases per subset, in :data:`medcl.data.splits.SUBSETS` order."""
    from medcl.data.splits import SUBSETS

    return {name: len(getattr(splits, name)) for name in SUBSETS}


def log_split(run: Any, result: SplitResult, settings: dict[str, Any]) -> None:
    """Log a split into ``run`` (a :class:`~medcl.tracking.client_runs.ClientRun` or an ``MlflowTracker``).

    Metrics ``split/n_<subset>``; params: ``settings`` (the amounts, seed and grouping asked for, as text) and
    ``data``; the splits file as an artifact under ``splits/``.
    """
    run.log_metrics({f"split/n_{name}": n for name, n in subset_sizes(result.splits).items()})
    run.log_params({key: str(value) for key, value in settings.items()})
    run.log_params({"data": str(result.info.root)})
    run.log_artifact(result.path, "splits")
