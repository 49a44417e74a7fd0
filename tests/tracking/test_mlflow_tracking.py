"""The embedded MLflow store: reads never create it, concurrent first writers do not race on its schema."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medcl.errors import MedclError
from medcl.tracking.mlflow_tracking import resolve_checkpoint, resolve_store

# Each process imports everything, says it is ready, then waits for the "go" file, so that all of them
# reach the first MLflow call (which creates and migrates the SQLite schema) at the same moment.
_CREATE_TRACKER = """
import sys, time
from pathlib import Path
from medcl.tracking.mlflow_tracking import MlflowTracker, resolve_store
import mlflow.store.tracking.sqlalchemy_store  # the slow import, before the start line
out, ready, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.01)
uri, root = resolve_store(None, out)
tracker = MlflowTracker(uri, root, "race")
print(tracker.experiment_id)
"""


def test_concurrent_trackers_on_a_fresh_store_all_succeed(tmp_path: Path) -> None:
    out = tmp_path / "fresh"  # no store yet: the first MlflowTracker creates it
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    go = tmp_path / "go"
    n = 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CREATE_TRACKER, str(out), str(tmp_path / f"ready{i}"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(n)):
            assert time.monotonic() < deadline, "the tracker processes did not start within 120 s"
            assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs if p.poll()]
            time.sleep(0.05)
        go.touch()
        results = [(p.wait(timeout=180), p.stdout.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [text for rc, text in results if rc != 0]
    assert not failed, failed[0]
    # One experiment, created once, seen by every process.
    assert len({text.strip().splitlines()[-1] for _, text in results}) == 1


def test_read_resolution_does_not_create_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "nostore"
    with pytest.raises(MedclError, match="no MLflow store"):
        resolve_store(None, missing, create=False)
    with pytest.raises(MedclError, match="no MLflow store"):
        resolve_store(f"sqlite:///{missing / 'mlflow.db'}", tmp_path, create=False)
    assert not missing.exists()
    # Writing (training) still creates the folder.
    uri, root = resolve_store(None, missing)
    assert (
        missing.is_dir()
        and uri == f"sqlite:///{missing / 'mlflow.db'}"
        and root == str(missing / "mlartifacts")
    )


@pytest.mark.parametrize("source", ["typo.pt", "0123456789abcdef0123456789abcdef", "runs:/abc/model.pt"])
def test_model_lookup_without_a_store_fails_in_one_line_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(MedclError) as excinfo:
        resolve_checkpoint(source, None, "medcl_runs")
    message = str(excinfo.value)
    assert "\n" not in message and source in message and str(tmp_path / "medcl_runs" / "mlflow.db") in message
    with pytest.raises(MedclError, match="no MLflow store"):
        resolve_checkpoint(source, f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}", "medcl_runs")
    assert list(tmp_path.iterdir()) == []


def test_a_ctrl_c_during_end_still_ends_the_run_killed(tmp_path: Path, monkeypatch) -> None:
    """A second Ctrl-C arriving while the run is being ended must not leave it RUNNING."""
    import os
    import signal

    import mlflow
    import pytest

    from medcl.tracking.mlflow_tracking import MlflowTracker, resolve_store

    uri, root = resolve_store(None, tmp_path)
    tracker = MlflowTracker(uri, root, "exp")
    run_id = tracker.start(run_name="r")
    real_end = mlflow.end_run

    def end_run_interrupted(status: str = "FINISHED") -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again, mid-clean-up
        real_end(status=status)

    monkeypatch.setattr(mlflow, "end_run", end_run_interrupted)
    with pytest.raises(KeyboardInterrupt):  # delivered, but only once the run is ended
        tracker.end("KILLED")
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "KILLED"
