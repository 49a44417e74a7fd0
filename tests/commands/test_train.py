"""`medcl train` from the command line: errors before any work, a real run, DDP under torchrun."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from medcl.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "hippocampus" / "supervised.yaml"
FAST = [
    "--set",
    "model.features=[8, 8, 16, 32, 64, 8]",
    "--set",
    "data.batch_size=4",
    "--set",
    "data.num_workers=0",
    "--set",
    "tracking.log_model=false",
]


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def test_unknown_config_key_fails_before_any_work(hippocampus, output_dir, capsys) -> None:
    code = run_cli("train", CONFIG, "--data", hippocampus, "--runs", output_dir, "--set", "optim.lrr=1")
    err = capsys.readouterr().err
    assert code == 1
    assert "unknown config key 'optim.lrr'" in err and "Traceback" not in err
    assert not (output_dir / "runs").exists()


def test_ill_typed_flag_value(hippocampus, output_dir, capsys) -> None:
    assert (
        run_cli("train", CONFIG, "--data", hippocampus, "--runs", output_dir, "--set", "train.steps=many")
        == 1
    )
    assert "config key 'train.steps'" in capsys.readouterr().err


def test_missing_dataset_and_bad_splits(hippocampus, output_dir, tmp_path, capsys) -> None:
    assert run_cli("train", CONFIG, "--data", tmp_path / "nope", "--runs", output_dir) == 1
    assert "nope" in capsys.readouterr().err
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"labeled": ["hippocampus_001", "hippocampus_999"], "val": []}))
    assert run_cli("train", CONFIG, "--data", hippocampus, "--splits", splits, "--runs", output_dir) == 1
    err = capsys.readouterr().err
    assert "hippocampus_999" in err and "splits.json" in err


def test_corrupt_case_is_named(hippocampus, output_dir, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    ids = ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (hippocampus / "imagesTr").glob("*.nii.gz"))[:3]
    meta = json.loads((hippocampus / "dataset.json").read_text())
    meta["training"] = [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids]
    (data / "dataset.json").write_text(json.dumps(meta))
    for i in ids:
        shutil.copy(hippocampus / "imagesTr" / f"{i}.nii.gz", data / "imagesTr")
        shutil.copy(hippocampus / "labelsTr" / f"{i}.nii.gz", data / "labelsTr")
    bad = data / "imagesTr" / f"{ids[0]}.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti at all"))
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    assert run_cli("train", CONFIG, "--data", data, "--runs", output_dir, "--steps", 1, *FAST) == 1
    err = capsys.readouterr().err
    assert f"{ids[0]}: imagesTr/{ids[0]}.nii.gz: cannot read image" in err and "Traceback" not in err
    # Nothing was written into (or changed in) the dataset folder.
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


def _damage(path: Path, how: str) -> None:
    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    data = np.asarray(img.dataobj)
    if how == "cropped":
        data = data[:-3]
    elif how == "value 7":
        data = data.copy()
        data[data == 2] = 7
    elif how == "fractional":
        data = data.astype(np.float32)
        data[data == 2] = 0.5
    elif how == "nan":
        data = data.astype(np.float32)
        data[0, 0, 0] = np.nan
    elif how == "4d":
        data = np.stack([data, data], axis=-1)
    nib.save(nib.Nifti1Image(data, img.affine), path)


BAD_INPUTS = {
    "cropped": ("labelsTr", "label shape"),
    "value 7": ("labelsTr", "7"),
    "fractional": ("labelsTr", "label"),
    "nan": ("imagesTr", "NaN"),
    "4d": ("imagesTr", "4D"),
}


@pytest.mark.parametrize("how", sorted(BAD_INPUTS))
def test_train_refuses_what_data_check_refuses(mini, output_dir, how, capsys) -> None:
    folder, words = BAD_INPUTS[how]
    bad = "hippocampus_004"  # one of the `mini` fixture's three cases
    _damage(mini / folder / f"{bad}.nii.gz", how)
    assert run_cli("train", CONFIG, "--data", mini, "--runs", output_dir, "--steps", 1, *FAST) == 1
    err = capsys.readouterr().err
    assert "cannot be used for training" in err and f"{bad}: {folder}/{bad}.nii.gz" in err, err
    assert words in err and "Traceback" not in err
    assert not (output_dir / "runs").exists()  # stopped before any run folder or MLflow run
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_symlink_loop_in_imagestr_is_named(mini, output_dir, capsys) -> None:
    loop = mini / "imagesTr" / "a.nii.gz"
    loop.symlink_to("b.nii.gz")
    (mini / "imagesTr" / "b.nii.gz").symlink_to("a.nii.gz")
    assert run_cli("train", CONFIG, "--data", mini, "--runs", output_dir, "--steps", 1, *FAST) == 1
    err = capsys.readouterr().err
    assert f"{loop} of case 'a' cannot be opened: symbolic link loop" in err and "Traceback" not in err
    assert not (output_dir / "runs").exists()


def test_train_command_prints_summary(hippocampus, small_splits, output_dir, capsys) -> None:
    code = run_cli(
        "train",
        CONFIG,
        "--data",
        hippocampus,
        "--splits",
        small_splits,
        "--runs",
        output_dir,
        "--steps",
        2,
        "--seed",
        1,
        "--no-progress",
        *FAST,
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "run id:" in out and "best val Dice:" in out and "Anterior" in out and "Posterior" in out
    assert f"sqlite:///{output_dir / 'mlflow.db'}" in out


@pytest.mark.slow
def test_ddp_two_processes_gloo(hippocampus, small_splits, output_dir) -> None:
    """torchrun with 2 CPU processes: both train, only rank 0 logs one MLflow run."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "medcl.cli",
        "train",
        str(CONFIG),
        "--data",
        str(hippocampus),
        "--splits",
        str(small_splits),
        "--runs",
        str(output_dir),
        "--steps",
        "3",
        "--no-progress",
        "--set",
        "val.every=3",
        "--set",
        "train.threads=1",
        *FAST,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run id:") == 1
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("hippocampus").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["data.world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [3]
    assert "val/dice_mean" in run.data.metrics


def test_unknown_init_fails_without_creating_a_store(hippocampus, tmp_path, capsys) -> None:
    output = tmp_path / "fresh"
    code = run_cli("train", CONFIG, "--data", hippocampus, "--runs", output, "--init", "nope", *FAST)
    err = capsys.readouterr().err
    assert code == 1
    assert "'nope'" in err and "no MLflow store" in err and "Traceback" not in err
    assert not output.exists()


@pytest.mark.slow
def test_four_trainings_at_once_into_one_fresh_store(mini, tmp_path) -> None:
    """Started together on a new --output: all finish, four runs in four folders, the store intact."""
    import sqlite3

    out = tmp_path / "fresh"  # no store yet: the four race to create it
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "medcl.cli", "train", str(CONFIG), "--data", str(mini), "--runs", str(out)]
    cmd += ["--steps", "1", "--no-progress", *FAST, "--set", "train.threads=1", "--set", "val.hd95=false"]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(4)
    ]
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    folders = sorted(p.name for p in (out / "runs").iterdir())
    assert len(folders) == 4 and all(
        (out / "runs" / f / "checkpoints" / "best.pt").is_file() for f in folders
    )
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.info.run_name for r in runs) == folders and {r.info.status for r in runs} == {"FINISHED"}
    with sqlite3.connect(out / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
