"""`medcl.suggest.pool`: the pool from a splits file (with `--labeled N`), a dataset or an image folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medcl.errors import DataError
from medcl.suggest import load_pool


def test_load_pool_from_splits_with_labeled_groups(hippocampus: Path, tmp_path: Path, ids) -> None:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"labeled": ids[:3], "unlabeled": [ids[3]], "val": [], "test": []}))
    pool, labeled, splits = load_pool(hippocampus, path)
    assert [c.id for c in pool] == [ids[3]] and [c.id for c in labeled] == ids[:3]
    pool, labeled, _ = load_pool(hippocampus, path, labeled_groups=1)
    assert [c.id for c in pool] == [ids[3], *ids[1:3]] and [c.id for c in labeled] == ids[:1]
    assert [Path(p).resolve() for p in pool[0].paths] == [
        (hippocampus / "imagesTr" / f"{ids[3]}.nii.gz").resolve()
    ]
    path.write_text(json.dumps({"labeled": ids, "unlabeled": [], "val": [], "test": []}))
    with pytest.raises(DataError, match="no unlabeled cases.*--labeled N"):
        load_pool(hippocampus, path)
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(hippocampus / "imagesTr" / f"{ids[0]}.nii.gz", folder)
    pool, labeled, splits = load_pool(folder)
    assert [c.id for c in pool] == [ids[0]] and labeled == [] and splits is None
