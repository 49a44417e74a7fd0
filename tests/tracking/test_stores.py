"""What `medcl train` prints works as printed from any folder, and no lookup creates a tracking store."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest

from medcl.cli import main
from medcl.tracking.stores import known_stores, remember_store

REPO = Path(__file__).resolve().parents[2]
FAST = ["--set", "model.features=[8, 8, 16, 16, 32, 8]", "--set", "data.batch_size=4"]
FAST += ["--set", "data.num_workers=0", "--set", "val.every=2"]


def run_cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def test_printed_model_uri_works_from_another_folder(
    hippocampus: Path, small_splits: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MEDCL_STATE_DIR", str(tmp_path / "state"))
    train_dir, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    train_dir.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(train_dir)
    config = REPO / "configs" / "hippocampus" / "supervised.yaml"
    code = run_cli("train", config, "--data", hippocampus, "--splits", small_splits, "--steps", 2, *FAST)
    out = capsys.readouterr().out
    assert code == 0, out
    uri = re.search(r"MLflow model:\s+(models:/\S+)", out).group(1)
    run_id = re.search(r"run id:\s+(\w+)", out).group(1)
    store = f"sqlite:///{train_dir / 'medcl_runs' / 'mlflow.db'}"
    assert known_stores() == [store]

    monkeypatch.chdir(elsewhere)
    image = hippocampus / "imagesTr" / "hippocampus_001.nii.gz"
    for model, masks in ((uri, "masks"), (run_id, "masks_run")):
        assert run_cli("infer", "--model", model, "-i", image, "-o", masks, "--no-progress") == 0
        assert (elsewhere / masks / "hippocampus_001.nii.gz").is_file()
    args = ["--data", hippocampus, "--splits", small_splits, "--subset", "val", "--no-progress"]
    assert run_cli("evaluate", "--model", uri, *args, "-o", "eval/summary.json") == 0
    assert f"in {store}" in capsys.readouterr().out  # logged beside the training run, not in a new store
    assert sorted(p.name for p in elsewhere.iterdir()) == ["eval", "masks", "masks_run"]
    assert not list(elsewhere.rglob("mlflow.db")) and not list(elsewhere.rglob("mlruns"))
    client = mlflow.MlflowClient(tracking_uri=store)
    [run] = client.search_runs([client.get_experiment_by_name("evaluation").experiment_id])
    assert run.data.tags["medcl.model"] == uri


def test_unknown_model_is_looked_up_everywhere_and_creates_nothing(
    hippocampus: Path, tmp_path: Path, output_dir: Path, monkeypatch, capsys
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MEDCL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path / "out")
    remember_store(f"sqlite:///{output_dir / 'mlflow.db'}")
    remember_store(f"sqlite:///{tmp_path / 'gone' / 'mlflow.db'}")  # deleted since: skipped, not created
    assert known_stores() == [f"sqlite:///{output_dir / 'mlflow.db'}"]
    image = hippocampus / "imagesTr" / "hippocampus_001.nii.gz"
    for model in ("models:/m-0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"):
        assert run_cli("infer", "--model", model, "-i", image, "-o", tmp_path / "masks") == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not in sqlite:///" in err, err
    assert not (tmp_path / "gone").exists() and not (output_dir / "medcl_runs").exists()
    assert not (tmp_path / "masks").exists()


@pytest.mark.parametrize("value", ["sqlite:////x/mlflow.db", "http://server:5000"])
def test_remember_store_keeps_one_entry_per_store_newest_last(
    value: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MEDCL_STATE_DIR", str(tmp_path))
    db = tmp_path / "a.db"
    db.touch()
    remember_store(value)
    remember_store(f"sqlite:///{db}")
    remember_store(value)
    lines = (tmp_path / "stores.txt").read_text().splitlines()
    assert lines[-1] == value and len(lines) == len(set(lines))
