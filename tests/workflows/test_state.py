"""The workflow state file, its lock and the final table (no MLflow, no training)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medcl.errors import MedclError
from medcl.workflows.spec import build_workflow
from medcl.workflows.state import (
    FAILED,
    FINISHED,
    archive_previous_state,
    finished_outputs,
    format_state,
    new_state,
    read_state,
    state_path,
    take_lock,
    write_state,
)


@pytest.fixture
def wf(tmp_path: Path):
    stages = [
        {"name": "split", "kind": "split", "labeled": 2},
        {"name": "evaluate", "kind": "evaluate", "model": "m.pt", "splits": "s.json", "subset": "test"},
    ]
    return build_workflow({"name": "w", "data": "d", "output": str(tmp_path / "out"), "stages": stages})


def test_state_round_trip_and_errors(wf, tmp_path: Path) -> None:
    path = state_path(wf)
    assert path == tmp_path / "out" / "workflows" / "w" / "state.json"
    with pytest.raises(MedclError, match="no workflow state at"):
        read_state(path)
    state = new_state(wf, tmp_path / "w.yaml", parent="p" * 32, run_name="w-1", experiment_id="1", uri="u")
    assert {s: r["status"] for s, r in state["stages"].items()} == {"split": "PENDING", "evaluate": "PENDING"}
    write_state(path, state)
    assert read_state(path) == state and "updated" in state
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary file left
    path.write_text("{")
    with pytest.raises(MedclError, match="not valid JSON"):
        read_state(path)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(MedclError, match="is not a medcl workflow state"):
        read_state(path)


def test_lock_is_exclusive_but_a_stale_one_is_taken_over(wf) -> None:
    lock = take_lock(state_path(wf), "w")
    assert lock.read_text() == str(os.getpid())
    assert take_lock(state_path(wf), "w") == lock  # this very process may take it again
    lock.write_text(str(os.getppid()))  # a live process that is not this one
    with pytest.raises(MedclError, match=f"already running in process {os.getppid()}"):
        take_lock(state_path(wf), "w")
    lock.write_text("999999999")
    assert take_lock(state_path(wf), "w") == lock and lock.read_text() == str(os.getpid())


def test_a_new_run_archives_the_previous_state(wf, tmp_path: Path, capsys) -> None:
    path = state_path(wf)
    archive_previous_state(path)  # nothing to archive
    state = new_state(wf, tmp_path / "w.yaml", parent="p", run_name="w-1", experiment_id="1", uri="u")
    state["status"] = FAILED
    write_state(path, state)
    archive_previous_state(path)
    assert not path.exists() and read_state(path.parent / "history" / "w-1.json")["status"] == FAILED
    assert "was FAILED" in capsys.readouterr().out


def test_outputs_and_table(wf, tmp_path: Path) -> None:
    state = new_state(wf, tmp_path / "w.yaml", parent="p", run_name="w-1", experiment_id="1", uri="u")
    state["stages"]["split"].update(
        status=FINISHED, run_id="r1", outputs={"run_id": "r1", "splits": "/s.json"}
    )
    state["stages"]["evaluate"].update(status=FAILED, outputs={"dice": 0.5})
    assert finished_outputs(state) == {"split": {"run_id": "r1", "splits": "/s.json"}}
    state["stages"]["evaluate"]["status"] = FINISHED
    state["registered"] = {"uri": "models:/x@champion", "version": "3", "from": "train"}
    lines = format_state(wf, state, state_path(wf)).splitlines()
    assert lines[0] == "workflow w: RUNNING (parent run p)"
    assert lines[2].split() == ["split", "split", "FINISHED", "r1", "/s.json"]
    assert lines[3].split() == ["evaluate", "evaluate", "FINISHED", "Dice", "0.5000"]
    assert lines[-2] == "registered model: models:/x@champion (version 3, from train)"
