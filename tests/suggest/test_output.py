"""`medcl.suggest.output`: the CSV, the splits with the suggestion moved, the montage."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medcl.data.splits import Splits
from medcl.errors import DataError
from medcl.suggest import CSV_COLUMNS, montage, suggest, updated_splits, write_csv


def test_csv_splits_and_montage(tmp_path: Path, hand_built_predictor, pool_of, ids) -> None:
    predictor = hand_built_predictor()
    result = suggest(predictor, pool_of(ids), "entropy", 2)
    path = write_csv(result, tmp_path / "out" / "s.csv")
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert [r["suggested"] for r in rows] == ["1", "1", "0", "0"]
    assert {r["strategy"] for r in rows} == {"entropy"} and {r["model_run"] for r in rows} == {"hand-built"}
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)

    splits = Splits(labeled=["hippocampus_010"], unlabeled=[*ids, "hippocampus_011"], val=["hippocampus_012"])
    new = updated_splits(splits, result)
    top = [r["case"] for r in rows[:2]]
    assert new.labeled == ["hippocampus_010", *top]
    assert new.unlabeled == [c for c in [*ids, "hippocampus_011"] if c not in top]
    assert new.val == ["hippocampus_012"]
    assert new.meta["suggested"][0]["cases"] == top and new.meta["suggested"][0]["strategy"] == "entropy"
    new.save(tmp_path / "new.json")
    assert Splits.load(tmp_path / "new.json").labeled == new.labeled
    with pytest.raises(DataError, match="not in 'unlabeled'"):
        updated_splits(Splits(labeled=ids), result)

    picture = montage(result)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.shape[1] == 2 * 192  # one tile per suggested case (at most 8)
    assert montage(result, cases=4).shape[1] == 4 * 192
