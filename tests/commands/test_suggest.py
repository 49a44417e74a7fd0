"""`medcl suggest` and `medcl infer --uncertainty` from the command line: files, MLflow nesting, bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np

from medcl.cli import main
from medcl.data.splits import Splits

IDS = ["hippocampus_001", "hippocampus_004", "hippocampus_006", "hippocampus_008", "hippocampus_011"]


def splits_file(folder: Path) -> Path:
    path = folder / "splits.json"
    path.write_text(json.dumps({"labeled": IDS[:1], "unlabeled": IDS[1:], "val": [], "test": []}))
    return path


def test_suggest_writes_csv_montage_splits_and_a_nested_mlflow_run(
    hippocampus: Path, tmp_path: Path, output_dir: Path, tiny_checkpoint, capsys
) -> None:
    uri = f"sqlite:///{output_dir / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("medcl-test", artifact_location=str(output_dir / "mlartifacts"))
    model_run = client.create_run(experiment, run_name="trained").info.run_id
    ckpt = tiny_checkpoint(tmp_path / "model.pt", run_id=model_run)
    splits = splits_file(tmp_path)
    out = tmp_path / "picks"
    argv = ["suggest", "--model", str(ckpt), "--data", str(hippocampus), "--splits", str(splits), "--budget", "2",
            "-o", str(out / "next.csv"), "--update-splits", str(out / "new_splits.json"), "--runs", str(output_dir),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "scoring 4 unlabeled case(s) with --strategy entropy" in printed

    rows = list(csv.DictReader((out / "next.csv").open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert sorted(r["case"] for r in rows) == IDS[1:]
    assert [r["suggested"] for r in rows] == ["1", "1", "0", "0"]
    assert {r["model_run"] for r in rows} == {model_run}
    top = [r["case"] for r in rows[:2]]
    new = Splits.load(out / "new_splits.json")
    assert new.labeled == [IDS[0], *top] and sorted(new.unlabeled) == sorted(set(IDS[1:]) - set(top))
    assert (out / "next_montage.png").stat().st_size > 0

    # The suggestion run sits under the model's run, in its experiment, with the files.
    runs = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{model_run}'")
    assert len(runs) == 1
    child = runs[0]
    assert child.data.tags["medcl.strategy"] == "entropy" and child.data.params["budget"] == "2"
    assert child.data.metrics["suggest/seconds_per_case"] > 0
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "suggest")}
    assert {"suggest/next.csv", "suggest/next_montage.png", "suggest/new_splits.json"} <= artifacts

    # Existing outputs are not replaced without --overwrite.
    assert main(argv) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_suggest_bad_inputs(hippocampus: Path, tmp_path: Path, tiny_checkpoint, image_folder, capsys) -> None:
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    splits = splits_file(tmp_path)
    base = ["suggest", "--model", str(ckpt), "--data", str(hippocampus), "--splits", str(splits), "--no-tracking",
            "--no-progress", "-o", str(tmp_path / "s.csv")]  # fmt: skip

    assert main([*base, "--budget", "2", "--strategy", "disagreement"]) == 1
    err = capsys.readouterr().err
    assert "medcl: error: --strategy disagreement needs two networks" in err
    assert "strategies this model supports: entropy, tta, diverse, random" in err

    assert main([*base, "--budget", "5"]) == 1
    assert "--budget 5 is larger than the pool: 4 unlabeled case(s)" in capsys.readouterr().err
    assert main([*base, "--budget", "0"]) == 1
    assert "--budget must be at least 1" in capsys.readouterr().err
    assert (
        main([*base[:5], "--no-tracking", "--budget", "1", "--update-splits", str(tmp_path / "n.json")]) == 1
    )
    assert "--update-splits needs --splits" in capsys.readouterr().err
    assert main([*base, "--budget", "1", "--update-splits", str(splits)]) == 1
    assert "must name a new file" in capsys.readouterr().err
    assert main([*base, "--budget", "1", "-o", str(hippocampus / "s.csv")]) == 1  # the dataset is read-only
    assert not (hippocampus / "s.csv").exists()
    capsys.readouterr()
    # Random needs no scoring pass over the pool; a plain image folder is a pool too.
    folder = image_folder(IDS[:3], "scans")
    argv = ["suggest", "--model", str(ckpt), "--data", str(folder), "--budget", "2", "--strategy", "random",
            "--no-tracking", "--no-progress", "-o", str(tmp_path / "r.csv")]  # fmt: skip
    assert main(argv) == 0
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert sorted(r["case"] for r in rows) == IDS[:3] and {r["score"] for r in rows} == {""}


def test_infer_uncertainty_beside_each_mask(tmp_path: Path, tiny_checkpoint, image_folder) -> None:
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    inputs = image_folder(IDS[:2])
    out = tmp_path / "masks"
    argv = ["infer", "--model", str(ckpt), "--input", str(inputs), "--output", str(out), "--uncertainty",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{i}.nii.gz" for i in IDS[:2]] + [f"{i}_uncertainty.nii.gz" for i in IDS[:2]]
    )
    for i in IDS[:2]:
        mask, unc = nib.load(out / f"{i}.nii.gz"), nib.load(out / f"{i}_uncertainty.nii.gz")
        assert unc.shape == mask.shape and unc.get_data_dtype() == np.float32
        np.testing.assert_allclose(unc.affine, mask.affine)
        values = np.asanyarray(unc.dataobj)
        assert 0.0 <= values.min() and values.max() <= 1.0 + 1e-5
    assert main(argv) == 1  # no silent replacement of masks or maps
    assert main([*argv, "--overwrite"]) == 0
