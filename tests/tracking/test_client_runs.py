"""medcl.tracking.client_runs (runs by id through a client) and stores.results_store (which store gets a run)."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from medcl.tracking.client_runs import ClientStore, end_active_run, tracking_uri_set
from medcl.tracking.stores import results_store


def test_tracking_uri_set_restores_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    with tracking_uri_set(f"sqlite:///{tmp_path / 'a.db'}"):
        assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'a.db'}"
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(RuntimeError), tracking_uri_set(f"sqlite:///{tmp_path / 'a.db'}"):
        raise RuntimeError
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_runs_by_id_while_a_fluent_run_is_active(output_dir: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{output_dir / 'mlflow.db'}"
    with tracking_uri_set(uri):
        store = ClientStore(uri, str(output_dir / "mlartifacts"))
        experiment = store.experiment("client-runs")
        assert store.experiment("client-runs") == experiment
        parent = store.create_run(experiment, "parent", {"kind": "parent"})
        fluent = mlflow.start_run(experiment_id=experiment, run_name="fluent")  # e.g. a training stage
        child = store.create_run(experiment, "child", {"mlflow.parentRunId": parent.run_id, "attempt": "1"})
        child.log_params({"long": "x" * 7000, "n": 3})
        child.log_metrics({"a": 1, "b": 2.5}, step=4)
        child.log_metrics({"c": 0.5})
        child.log_text("hello", "notes/hello.txt")
        (tmp_path / "f.txt").write_text("f")
        child.log_artifact(tmp_path / "f.txt", "files")
        child.set_tags({"t1": "v1"})
        assert child.status == "RUNNING" and child.params["n"] == "3" and len(child.params["long"]) == 6000
        child.end("FAILED")
        assert child.status == "FAILED"
        child.reopen()
        assert child.status == "RUNNING"
        child.end()
        assert mlflow.active_run().info.run_id == fluent.info.run_id  # untouched by the client runs
        end_active_run("KILLED")
        assert mlflow.active_run() is None
        end_active_run("KILLED")  # nothing active: nothing to do
        found = store.find_run(experiment, {"mlflow.parentRunId": parent.run_id, "attempt": "1"})
        assert found is not None and found.run_id == child.run_id
        assert store.find_run(experiment, {"mlflow.parentRunId": parent.run_id, "attempt": "2"}) is None
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(child.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["t1"] == "v1"
    assert run.data.metrics == {"a": 1.0, "b": 2.5, "c": 0.5}
    assert [m.step for m in client.get_metric_history(child.run_id, "a")] == [4]
    assert {a.path for a in client.list_artifacts(child.run_id)} == {"notes", "files"}
    assert client.get_run(fluent.info.run_id).info.status == "KILLED"
    assert (
        client.get_experiment(experiment).artifact_location
        == (output_dir / "mlartifacts" / "client-runs").as_uri()
    )


def test_results_store_rules(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Nothing named, no model store, no ./medcl_runs store: log nowhere, create nothing.
    assert results_store(None, None, None) == (None, Path("medcl_runs"))
    assert not (tmp_path / "medcl_runs").exists()
    # The store the model came from, with its artifacts beside it.
    model_db = tmp_path / "trained" / "mlflow.db"
    store, runs = results_store(None, None, f"sqlite:///{model_db}")
    assert (
        store == (f"sqlite:///{model_db}", str(model_db.parent / "mlartifacts")) and runs == model_db.parent
    )
    # A named --runs folder wins over the model's store and is created.
    store, runs = results_store(None, "named", f"sqlite:///{model_db}")
    assert store == (f"sqlite:///{tmp_path / 'named' / 'mlflow.db'}", str(tmp_path / "named" / "mlartifacts"))
    assert runs == tmp_path / "named" and runs.is_dir()
    # An existing ./medcl_runs store is used when nothing else is known.
    (tmp_path / "medcl_runs").mkdir()
    (tmp_path / "medcl_runs" / "mlflow.db").touch()
    store, runs = results_store(None, None, None)
    assert store is not None and store[0] == f"sqlite:///{tmp_path / 'medcl_runs' / 'mlflow.db'}"
    # A non-SQLite store keeps the runs folder for the files.
    store, runs = results_store("http://127.0.0.1:5000", "here", None)
    assert store == ("http://127.0.0.1:5000", None) and runs == Path("here")
