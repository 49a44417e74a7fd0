"""The cases ``medcl suggest`` ranks (the pool) and the labeled ones ``diverse`` keeps away from.

The pool is the ``unlabeled`` subset of a splits file, a dataset's unlabeled images, or every image of a
folder; each case is a :class:`PoolCase` (its id and one path per channel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medcl.data.splits import Splits
from medcl.errors import DataError

__all__ = ["PoolCase", "load_pool"]


@dataclass
class PoolCase:
    """A case that may be suggested (or, for ``diverse``, a labeled case): its id and one path per channel."""

    id: str
    paths: list[Path]


def load_pool(
    data: str | Path,
    splits_path: str | Path | None = None,
    *,
    labeled_groups: int | None = None,
    group_by: str | None = None,
) -> tuple[list[PoolCase], list[PoolCase], Splits | None]:
    """The pool (and the labeled cases) from a dataset + splits file, a dataset alone, or an image folder.

    Args:
        data: A dataset folder (``dataset.json``), or a folder / ``.txt`` list of images (no splits then).
        splits_path: A splits file: the pool is its ``unlabeled`` subset.
        labeled_groups: As ``--labeled N`` of training: keep the first N labeled groups of the splits, the
            rest joins the pool (what a model trained with ``--labeled N`` saw).
        group_by: Grouping of ``labeled_groups``.

    Returns:
        ``(pool, labeled, splits)``; ``splits`` is None without a splits file. A dataset without a splits file
        offers its unlabeled cases (``imagesTs``, the ``test`` list, images without labels); an image folder
        offers every image and has no labeled cases.

    Raises:
        DataError: Unreadable dataset or splits, unknown ids, an empty pool (with what to do about it).
    """
    from medcl.data.dataset import load_dataset
    from medcl.inference.inputs import collect_inputs

    root = Path(data).expanduser()
    if not (root / "dataset.json").is_file():
        if splits_path is not None:
            raise DataError(f"--splits needs a dataset folder with dataset.json as --data; {root} has none")
        cases = collect_inputs([str(root)])
        return [PoolCase(c.name, list(c.paths)) for c in cases], [], None
    info = load_dataset(root)
    splits = None
    if splits_path is not None:
        splits = Splits.load(splits_path)
        splits.check_against(info)
        if labeled_groups is not None:
            splits = splits.with_labeled(labeled_groups, group_by=group_by)
        pool_ids, labeled_ids = list(splits.unlabeled), list(splits.labeled)
    else:
        pool_ids, labeled_ids = [c.id for c in info.unlabeled], [c.id for c in info.cases]
    if not pool_ids:
        where = f"splits file {splits_path}" if splits_path else f"dataset {info.root}"
        raise DataError(
            f"{where} has no unlabeled cases to suggest from; move candidates to 'unlabeled' or pass --labeled N "
            "(as in training) to treat all but the first N labeled groups as unlabeled"
        )

    def case(i: str) -> PoolCase:
        return PoolCase(i, list(info.case(i).images))

    return [case(i) for i in pool_ids], [case(i) for i in labeled_ids], splits
