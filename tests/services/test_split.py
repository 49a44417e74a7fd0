"""medcl.services.split on the real Hippocampus dataset: the file, the counts, the refusals, the MLflow log."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from medcl.data.splits import Splits
from medcl.errors import DataError
from medcl.services.split import log_split, split_dataset, subset_sizes
from medcl.tracking.client_runs import ClientStore, tracking_uri_set


def test_split_is_saved_seeded_and_disjoint(hippocampus: Path, tmp_path: Path) -> None:
    result = split_dataset(hippocampus, tmp_path / "a" / "splits.json", labeled=20, val=5, test=7, seed=3)
    assert result.path == (tmp_path / "a" / "splits.json").resolve() and result.path.is_file()
    assert result.info.root == hippocampus.resolve()
    sizes = subset_sizes(result.splits)
    assert list(sizes) == ["labeled", "unlabeled", "val", "test"]
    assert (sizes["labeled"], sizes["val"], sizes["test"]) == (20, 5, 7)
    assert sum(sizes.values()) == len(result.info.cases) + len(result.info.unlabeled)
    ids = [i for name in sizes for i in getattr(result.splits, name)]
    assert len(ids) == len(set(ids))  # every case in exactly one subset
    assert Splits.load(result.path) == result.splits  # what was written is what was returned

    again = split_dataset(hippocampus, tmp_path / "b.json", labeled=20, val=5, test=7, seed=3)
    other = split_dataset(hippocampus, tmp_path / "c.json", labeled=20, val=5, test=7, seed=4)
    assert again.splits == result.splits
    assert other.splits.test != result.splits.test


def test_existing_file_needs_overwrite(mini: Path, tmp_path: Path) -> None:
    target = tmp_path / "splits.json"
    first = split_dataset(mini, target, labeled=1, val=1, seed=0)
    with pytest.raises(DataError, match="already exists; pass --force"):
        split_dataset(mini, target, labeled=1, val=1, seed=1)
    assert Splits.load(target) == first.splits  # untouched
    split_dataset(mini, target, labeled=1, val=1, seed=1, overwrite=True)
    assert json.loads(target.read_text())["meta"]["seed"] == 1


def test_refuses_a_folder_and_the_dataset_itself(mini: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a folder; give a file name"):
        split_dataset(mini, tmp_path, labeled=1)
    with pytest.raises(DataError, match=r"the splits file .* is inside the dataset folder"):
        split_dataset(mini, mini / "splits.json", labeled=1, option="the splits file")
    assert not (mini / "splits.json").exists()


def test_log_split_records_sizes_settings_and_file(mini: Path, tmp_path: Path, output_dir: Path) -> None:
    result = split_dataset(mini, tmp_path / "splits.json", labeled=1, val=1, test=1, seed=2)
    uri = f"sqlite:///{output_dir / 'mlflow.db'}"
    with tracking_uri_set(uri):
        store = ClientStore(uri, str(output_dir / "mlartifacts"))
        run = store.create_run(store.experiment("split-test"), "split", {})
        log_split(run, result, {"labeled": 1, "val": 1, "test": 1, "seed": 2, "group_by": None})
        run.end()
    logged = mlflow.MlflowClient(tracking_uri=uri).get_run(run.run_id)
    assert logged.data.metrics == {
        "split/n_labeled": 1,
        "split/n_unlabeled": 0,
        "split/n_val": 1,
        "split/n_test": 1,
    }
    assert logged.data.params == {
        "labeled": "1",
        "val": "1",
        "test": "1",
        "seed": "2",
        "group_by": "None",
        "data": str(mini.resolve()),
    }
    artifacts = mlflow.MlflowClient(tracking_uri=uri).list_artifacts(run.run_id, "splits")
    assert [a.path for a in artifacts] == ["splits/splits.json"]
