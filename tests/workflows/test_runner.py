"""``medcl run`` end to end on the bundled Hippocampus sample with tiny budgets: nested runs, a failing
stage, ``--resume`` without redoing finished stages, and the registry alias used by ``medcl infer``."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest

from medcl.cli import main

# Whole workflows (split, train, evaluate, infer, register): `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "workflows" / "demo.yaml"
# Tiny budgets: 2 labeled / 1 val / 1 test cases, 2 steps, a narrow network.
TINY = [
    "vars.steps=2",
    "stages.split.labeled=2",
    "stages.split.val=1",
    "stages.split.test=1",
    "set.data.batch_size=4",
    "set.val.overlays=1",
    "set.model.features=[8, 8, 16, 16, 32, 8]",
    "device=cpu",
]


def _medcl(*args: object) -> int:
    return main([str(a) for a in args])


def _runs(client: mlflow.MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=100)


def test_workflow_fails_resumes_and_registers(output_dir: Path, tmp_path: Path, capsys) -> None:
    sets = [a for s in TINY for a in ("--set", s)]
    missing = tmp_path / "missing.nii.gz"
    code = _medcl(
        "run",
        WORKFLOW,
        "--runs",
        output_dir,
        *sets,
        "--set",
        f"stages.infer.input={missing}",
        "--no-progress",
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("medcl: error: workflow demo: stage 'infer' (infer) failed: input not found")
    assert err[-1].endswith("--resume")

    state_file = output_dir / "workflows" / "demo" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["status"] == "FAILED"
    assert [state["stages"][s]["status"] for s in ("split", "train", "evaluate", "infer")] == [
        "FINISHED",
        "FINISHED",
        "FINISHED",
        "FAILED",
    ]
    first_ids = {s: state["stages"][s]["run_id"] for s in ("split", "train", "evaluate")}
    parent = state["parent_run_id"]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    assert client.get_run(parent).info.status == "FAILED"
    failed_infer = client.get_run(state["stages"]["infer"]["run_id"])
    assert failed_infer.info.status == "FAILED"
    assert failed_infer.data.tags["mlflow.parentRunId"] == parent
    assert "input not found" in failed_infer.data.tags["medcl.error"]

    # Fixed (the file's own input), resumed: only the infer stage runs again, in the same parent run.
    assert _medcl("run", WORKFLOW, "--runs", output_dir, *sets, "--resume", "--no-progress") == 0
    state = json.loads(state_file.read_text())
    assert state["status"] == "FINISHED" and state["parent_run_id"] == parent
    assert {s: state["stages"][s]["run_id"] for s in first_ids} == first_ids
    assert state["stages"]["infer"]["attempts"] == 2

    runs = _runs(client, "workflow-demo")
    children = [r for r in runs if r.info.run_id != parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in children)
    per_stage = {}
    for r in children:
        per_stage.setdefault(r.data.tags["medcl.workflow.stage"], []).append(r.info.status)
    assert per_stage == {
        "split": ["FINISHED"],
        "train": ["FINISHED"],
        "evaluate": ["FINISHED"],
        "infer": ["FINISHED", "FAILED"],
    }, "a finished stage was run again"

    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.params["train.run_id"] == first_ids["train"]
    assert parent_run.data.params["train.model"].startswith("models:/")
    assert 0 <= parent_run.data.metrics["stages/evaluate/dice"] <= 1
    assert {a.path for a in client.list_artifacts(parent, "workflow")} == {
        "workflow/resolved.yaml",
        "workflow/state.json",
    }
    train_run = client.get_run(first_ids["train"])
    assert "val/dice_mean" in train_run.data.metrics
    evaluate_run = client.get_run(first_ids["evaluate"])
    assert "test/dice_mean" in evaluate_run.data.metrics
    assert {a.path for a in client.list_artifacts(first_ids["evaluate"])} >= {"summary.json", "summary.csv"}
    infer_id = state["stages"]["infer"]["run_id"]
    assert [a.path for a in client.list_artifacts(infer_id, "masks")] == ["masks/hippocampus_008.nii.gz"]

    # The registered champion is the train stage's model: `medcl infer` with the alias gives the same mask.
    reg = state["registered"]
    assert reg["uri"] == "models:/hippocampus-demo@champion" and reg["from"] == "train"
    assert str(client.get_model_version_by_alias("hippocampus-demo", "champion").version) == reg["version"]
    case = ROOT / "demo" / "Task04_Hippocampus_sample" / "imagesTr" / "hippocampus_008.nii.gz"
    assert (
        _medcl(
            "infer",
            "--model",
            reg["uri"],
            "--runs",
            output_dir,
            "--input",
            case,
            "-o",
            tmp_path / "masks",
            "--device",
            "cpu",
            "--no-progress",
        )
        == 0
    )
    by_alias = nib.load(tmp_path / "masks" / "hippocampus_008.nii.gz").get_fdata()
    by_workflow = nib.load(Path(state["stages"]["infer"]["outputs"]["masks"]) / "hippocampus_008.nii.gz")
    np.testing.assert_array_equal(by_alias, by_workflow.get_fdata())

    # Resuming a finished workflow does nothing.
    assert _medcl("run", WORKFLOW, "--runs", output_dir, *sets, "--resume") == 0
    assert len(_runs(client, "workflow-demo")) == len(runs)


def test_invalid_stage_config_stops_before_any_run(output_dir: Path, capsys) -> None:
    args = ["run", WORKFLOW, "--runs", output_dir, "--set", "stages.train.set.optim.lrr=0.1"]
    assert _medcl(*args, "--check") == 0  # --check validates the workflow only, not its training configs
    assert "train              train" in capsys.readouterr().out
    assert _medcl(*args) == 1
    err = capsys.readouterr().err
    assert "stage 'train' of workflow" in err and "workflows/demo.yaml" in err
    assert "unknown config key 'optim.lrr'" in err
    assert not (output_dir / "workflows").exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    assert client.get_experiment_by_name("workflow-demo") is None


def test_a_running_workflow_is_not_run_twice(output_dir: Path, capsys) -> None:
    import os

    lock = output_dir / "workflows" / "demo" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(str(os.getppid()))  # a live process that is not this one
    assert _medcl("run", WORKFLOW, "--runs", output_dir) == 1
    assert f"already running in process {os.getppid()}" in capsys.readouterr().err
    lock.write_text("999999999")  # a stale lock (no such process) is taken over
    from medcl.workflows import WorkflowRunner, load_workflow

    runner = WorkflowRunner(load_workflow(WORKFLOW, [f"output={output_dir}"]), WORKFLOW)
    assert runner._lock() == lock and lock.read_text() == str(os.getpid())
