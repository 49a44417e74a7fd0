"""``medcl evaluate`` from the command line on real Hippocampus labels: folders, problems, files, modes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcl.cli import main

IDS = ("hippocampus_001", "hippocampus_004", "hippocampus_006", "hippocampus_008", "hippocampus_011")
SAME, SHIFTED, CROPPED, MISSING, VALUE5 = IDS


def run_cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), path)


@pytest.fixture
def folders(hippocampus: Path, tmp_path: Path) -> tuple[Path, Path]:
    """gt/ with 7 real labels; pred/ with one identical, one shifted, one cropped, one missing,
    one holding the value 5, one with a moved origin, one unreadable, and one that has no reference."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for case in IDS:
        shutil.copy(hippocampus / "labelsTr" / f"{case}.nii.gz", gt)
    shutil.copy(hippocampus / "labelsTr" / "hippocampus_015.nii.gz", gt)  # origin moved below
    shutil.copy(gt / f"{SAME}.nii.gz", pred)
    array, affine = load(gt / f"{SHIFTED}.nii.gz")
    save(np.roll(array, 1, axis=0), affine, pred / f"{SHIFTED}.nii.gz")
    array, affine = load(gt / f"{CROPPED}.nii.gz")
    save(array[:-2], affine, pred / f"{CROPPED}.nii.gz")
    array, affine = load(gt / f"{VALUE5}.nii.gz")
    array[array == 2] = 5
    save(array, affine, pred / f"{VALUE5}.nii.gz")
    array, affine = load(gt / "hippocampus_015.nii.gz")
    moved = affine.copy()
    moved[:3, 3] += (0.0, 0.0, 2.0)
    save(array, moved, pred / "hippocampus_015.nii.gz")
    shutil.copy(hippocampus / "labelsTr" / "hippocampus_017.nii.gz", pred)  # no reference
    shutil.copy(hippocampus / "labelsTr" / "hippocampus_014.nii.gz", gt)
    (pred / "hippocampus_014.nii.gz").write_bytes(b"\x1f\x8b not really gzip")  # unreadable
    return pred, gt


def test_folder_mode_end_to_end(folders, hippocampus: Path, tmp_path: Path, capsys) -> None:
    pred, gt = folders
    before = {p: sorted(x.name for x in p.iterdir()) for p in (pred, gt)}
    out = tmp_path / "results" / "summary.json"
    code = run_cli(
        "evaluate",
        "--pred",
        pred,
        "--gt",
        gt,
        "--labels",
        hippocampus / "dataset.json",
        "-o",
        out,
        "--no-progress",
    )
    stdout = capsys.readouterr().out
    assert code == 1  # problems found, but everything is written
    assert {p: sorted(x.name for x in p.iterdir()) for p in (pred, gt)} == before  # nothing written there

    data = json.loads(out.read_text())
    per_case = {c["case"]: c for c in data["metric_per_case"]}
    assert sorted(per_case) == [SAME, SHIFTED]
    same = per_case[SAME]["metrics"]
    assert same["Anterior"]["dice"] == 1.0 and same["Posterior"]["dice"] == 1.0
    assert same["Anterior"]["hd95"] == 0.0 and same["Posterior"]["asd"] == 0.0
    shifted = per_case[SHIFTED]["metrics"]["Anterior"]
    assert 0.5 < shifted["dice"] < 1.0 and shifted["hd95"] == pytest.approx(1.0)  # a 1 mm shift along x
    assert per_case[SHIFTED]["prediction"] == str(pred / f"{SHIFTED}.nii.gz")
    assert data["mean"]["Anterior"]["dice"] == pytest.approx((1.0 + shifted["dice"]) / 2)
    assert data["mean"]["Anterior"]["n_cases"] == 2
    assert data["settings"]["spacing"] == "mm" and data["settings"]["empty_policy"] == "strict"

    problems = {p["case"]: p for p in data["problems"]}
    assert sorted(problems) == sorted(
        [CROPPED, VALUE5, "hippocampus_014", "hippocampus_015", "hippocampus_017"]
    )
    # As nnU-Net's evaluate_folder: a reference without a prediction is not scored, only warned about.
    assert data["not_predicted"] == [MISSING]
    assert problems["hippocampus_014"]["message"].startswith("unreadable prediction file: Cannot read")
    shape = np.asarray(nib.load(gt / f"{CROPPED}.nii.gz").dataobj).shape
    cropped_shape = (shape[0] - 2, *shape[1:])
    assert (
        problems[CROPPED]["message"]
        == f"prediction shape {cropped_shape} differs from reference shape {shape}."
    )
    assert "label values [5]" in problems[VALUE5]["message"]
    assert problems[VALUE5]["file"] == str(pred / f"{VALUE5}.nii.gz")
    assert "geometry differs" in problems["hippocampus_015"]["message"]
    assert (
        "origin" in problems["hippocampus_015"]["message"]
        and "spacing" not in problems["hippocampus_015"]["message"]
    )
    assert problems["hippocampus_017"]["message"].startswith("prediction has no reference label")

    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 4  # 2 scored cases x 2 classes
    assert {(r["case"], r["class"]) for r in rows} == {
        (c, k) for c in (SAME, SHIFTED) for k in ("Anterior", "Posterior")
    }
    assert all(float(r["dice"]) == 1.0 for r in rows if r["case"] == SAME)

    assert "Anterior" in stdout and "foreground" in stdout and "2 cases scored" in stdout
    assert "5 problems in 5 cases" in stdout
    assert f"warning: 1 reference case(s) have no prediction and are not scored: {MISSING}" in stdout


def test_refuses_to_overwrite_then_overwrites(folders, tmp_path: Path, capsys) -> None:
    pred, gt = folders
    out = tmp_path / "summary.json"
    out.write_text("{}")
    assert run_cli("evaluate", "--pred", pred, "--gt", gt, "-o", out, "--no-progress") == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "{}" and not out.with_suffix(".csv").exists()
    assert run_cli("evaluate", "--pred", pred, "--gt", gt, "-o", out, "--overwrite", "--no-progress") == 1
    data = json.loads(out.read_text())
    assert set(data["mean"]) == {"1", "2"}  # without --labels the classes are the values in --gt, by number


def test_clean_folders_exit_zero_with_options(hippocampus: Path, tmp_path: Path, capsys) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for case in IDS[:2]:
        shutil.copy(hippocampus / "labelsTr" / f"{case}.nii.gz", gt)
        shutil.copy(hippocampus / "labelsTr" / f"{case}.nii.gz", pred)
    args = ["evaluate", "--pred", pred, "--gt", gt, "--labels", hippocampus, "--no-progress"]
    assert run_cli(*args, "--spacing", "voxel", "--empty-policy", "ssl4mis") == 0
    stdout = capsys.readouterr().out
    assert "HD95 (vox)" in stdout and "1.0000 ± 0.0000" in stdout and "not written" in stdout
    out = tmp_path / "s.json"
    assert run_cli(*args, "-o", out) == 0
    assert json.loads(out.read_text())["foreground_mean"] == {"asd": 0.0, "dice": 1.0, "hd95": 0.0}


def test_mode_errors_are_one_sentence(folders, capsys) -> None:
    pred, gt = folders
    assert run_cli("evaluate", "--pred", pred, "--gt", gt, "--model", "run123") == 1
    assert "cannot be combined" in capsys.readouterr().err
    assert run_cli("evaluate", "--pred", pred) == 1
    assert "folder mode needs --gt" in capsys.readouterr().err
    assert run_cli("evaluate") == 1
    assert "Give --pred DIR --gt DIR" in capsys.readouterr().err
    assert run_cli("evaluate", "--pred", pred, "--gt", pred) == 1
    assert "same folder" in capsys.readouterr().err
    assert run_cli("evaluate", "--pred", pred, "--gt", gt, "--uncertainty") == 1
    assert "--uncertainty belong to --model mode" in capsys.readouterr().err


# --- model mode -------------------------------------------------------------------------------------------


class StubPredictor:
    """Stands in for ``medcl.inference.predictor.Predictor``: returns each case's own label, shifted for one
    case, so the scores are known without a trained model."""

    loaded: list[tuple[str, str, str | None, str]] = []
    precisions: list[str] = []

    def __init__(self, dataset: Path) -> None:
        self.dataset = dataset
        self.class_names = ["background", "Anterior", "Posterior"]

    @classmethod
    def load(
        cls,
        source: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        tracking_uri: str | None = None,
        output: str = "medcl_runs",
    ):
        cls.loaded.append((source, device, tracking_uri, output))
        cls.precisions.append(precision)
        return cls(Path(json.loads(Path(source).read_text())["dataset"]))

    def segment(self, image_paths):
        name = Path(image_paths[0]).name
        labels, affine = load(self.dataset / "labelsTr" / name)
        return (np.roll(labels, 1, axis=0) if name.startswith(SHIFTED) else labels), affine


@pytest.fixture
def splits(tmp_path: Path) -> Path:
    path = tmp_path / "splits.json"
    path.write_text(
        json.dumps({"labeled": [IDS[2]], "unlabeled": [], "val": [IDS[3]], "test": [SAME, SHIFTED]})
    )
    return path


def test_model_mode_logs_a_new_mlflow_run(
    hippocampus, splits, output_dir, tmp_path, monkeypatch, capsys
) -> None:
    import mlflow

    monkeypatch.setattr("medcl.inference.predictor.Predictor", StubPredictor)
    model = tmp_path / "model.json"  # the stub's "checkpoint"
    model.write_text(json.dumps({"dataset": str(hippocampus)}))
    args = ["evaluate", "--model", model, "--data", hippocampus, "--splits", splits, "--subset", "test"]
    code = run_cli(*args, "--runs", output_dir, "--device", "cpu", "--precision", "fp32", "--no-progress")
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert StubPredictor.loaded[-1] == (str(model), "cpu", None, str(output_dir))
    assert StubPredictor.precisions[-1] == "fp32"

    [summary_path] = (output_dir / "evaluations").glob("test-*/summary.json")
    data = json.loads(summary_path.read_text())
    assert [c["case"] for c in data["metric_per_case"]] == [SAME, SHIFTED]
    assert data["metric_per_case"][0]["prediction"] is None
    assert data["settings"]["subset"] == "test" and data["settings"]["model"] == str(model)
    assert summary_path.with_suffix(".csv").is_file()

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("evaluation").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["medcl.model"] == str(model) and run.data.tags["medcl.subset"] == "test"
    metrics = run.data.metrics
    assert metrics["test/dice/Anterior"] == pytest.approx(data["mean"]["Anterior"]["dice"])
    assert metrics["test/hd95/Posterior"] == pytest.approx(data["mean"]["Posterior"]["hd95"])
    assert "test/asd/Anterior" in metrics
    assert (
        metrics["test/dice_mean"] == pytest.approx(data["foreground_mean"]["dice"])
        and metrics["test/dice_mean"] < 1
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"summary.json", "summary.csv"}
    assert "MLflow run" in stdout and "Anterior" in stdout
    # The same -o again is refused before any prediction.
    assert run_cli(*args, "--runs", output_dir, "-o", summary_path, "--no-progress") == 1
    assert "already exists" in capsys.readouterr().err


def test_model_mode_with_a_trained_checkpoint(hippocampus, small_splits, output_dir, capsys) -> None:
    """The real predictor on a 2-step model: scores are poor but every val case is predicted in its own
    geometry (no shape or geometry problem) and logged under ``val/``."""
    import mlflow

    fast = ["--set", "model.features=[8, 8, 16, 32, 64, 8]", "--set", "data.batch_size=4"]
    fast += ["--set", "data.num_workers=0", "--set", "tracking.log_model=false"]
    config = Path(__file__).resolve().parents[2] / "configs" / "hippocampus" / "supervised.yaml"
    train = ["train", config, "--data", hippocampus, "--splits", small_splits, "--runs", output_dir]
    assert run_cli(*train, "--steps", 2, "--no-progress", *fast) == 0
    [checkpoint] = output_dir.glob("runs/*/checkpoints/best.pt")
    capsys.readouterr()

    args = [
        "evaluate",
        "--model",
        checkpoint,
        "--data",
        hippocampus,
        "--splits",
        small_splits,
        "--subset",
        "val",
    ]
    code = run_cli(*args, "--runs", output_dir, "--device", "cpu", "--no-progress")
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    [summary_path] = (output_dir / "evaluations").glob("val-*/summary.json")
    data = json.loads(summary_path.read_text())
    val_ids = json.loads(small_splits.read_text())["val"]
    assert [c["case"] for c in data["metric_per_case"]] == val_ids and data["problems"] == []
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("evaluation").experiment_id])
    assert run.data.tags["medcl.subset"] == "val"
    assert run.data.metrics["val/dice_mean"] == pytest.approx(data["foreground_mean"]["dice"])


def test_model_mode_with_an_unknown_model_creates_no_store(
    hippocampus, small_splits, tmp_path, capsys
) -> None:
    output = tmp_path / "nostore"
    args = ["evaluate", "--model", "typo", "--data", hippocampus, "--splits", small_splits, "--subset", "val"]
    assert run_cli(*args, "--runs", output) == 1
    err = capsys.readouterr().err
    assert "'typo'" in err and "no MLflow store" in err and err.count("\n") == 1
    assert not output.exists()


def test_model_mode_scores_the_uncertainty_map(
    hippocampus: Path, tiny_checkpoint, tmp_path: Path, capsys
) -> None:
    """`--uncertainty`: the summary JSON and the printout carry the voxel AUROC and the case correlation."""
    model = tiny_checkpoint(tmp_path / "model.pt")
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"labeled": [IDS[0]], "unlabeled": [], "val": [], "test": list(IDS[1:4])}))
    out = tmp_path / "eval" / "summary.json"
    args = ["evaluate", "--model", model, "--data", hippocampus, "--splits", splits, "--subset", "test"]
    args += ["--device", "cpu", "--uncertainty", "-o", out, "--runs", tmp_path / "runs", "--no-progress"]
    assert run_cli(*args) == 0
    printed = capsys.readouterr().out
    assert "uncertainty vs errors: voxel AUROC" in printed and "over 3 cases" in printed
    scores = json.loads(out.read_text())["uncertainty"]
    assert set(scores["per_case"]) == set(IDS[1:4])
    assert 0.0 <= scores["error_auroc_mean"] <= 1.0  # an untrained network: any value, but a defined one
    assert all(0.0 <= c["mean_uncertainty"] <= 1.0 for c in scores["per_case"].values())
