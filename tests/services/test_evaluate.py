"""medcl.services.evaluate on real Hippocampus labels: cases of a subset, scores, metric names, MLflow logs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest

from medcl.errors import DataError
from medcl.services.evaluate import (
    check_classes,
    load_subset,
    log_evaluation_run,
    log_summary,
    metric_name,
    score_folders,
    score_model,
    summary_metrics,
    summary_params,
)
from medcl.tracking.client_runs import ClientStore, tracking_uri_set

IDS = ["hippocampus_001", "hippocampus_004", "hippocampus_006", "hippocampus_008"]
CLASSES = ["background", "Anterior", "Posterior"]


class Reference:
    """A predictor that returns each case's own reference label, rolled by one voxel for ``shifted`` cases:
    the scores are known without a model."""

    class_names = CLASSES

    def __init__(self, labels: Path, shifted: tuple[str, ...] = ()) -> None:
        self.labels = labels
        self.shifted = shifted

    def segment(self, image_paths):
        name = Path(image_paths[0]).name
        image = nib.load(self.labels / name)
        labels = np.asarray(image.dataobj)
        if name.removesuffix(".nii.gz") in self.shifted:
            labels = np.roll(labels, 1, axis=0)
        return labels, image.affine


@pytest.fixture
def splits(tmp_path: Path) -> Path:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"labeled": IDS[:1], "unlabeled": [], "val": [], "test": IDS[1:]}))
    return path


def test_load_subset_takes_the_subset_in_order(hippocampus: Path, splits: Path) -> None:
    subset = load_subset(hippocampus, splits, "test")
    assert subset.ids == IDS[1:] and subset.name == "test"
    assert [c.id for c in subset.cases] == IDS[1:]
    assert all(c.label is not None for c in subset.cases)
    assert load_subset(hippocampus, splits, "test", max_cases=2).ids == IDS[1:3]
    with pytest.raises(DataError, match=r"has no 'val' cases; choose the other --subset\."):
        load_subset(hippocampus, splits, "val", option="--subset")


def test_load_subset_checks_the_splits_against_the_dataset(mini: Path, splits: Path) -> None:
    with pytest.raises(DataError, match="hippocampus_008"):  # not one of mini's three cases
        load_subset(mini, splits, "test")


def test_check_classes(hippocampus: Path, splits: Path) -> None:
    info = load_subset(hippocampus, splits, "test").info

    class Named:
        def __init__(self, names):
            self.class_names = names

    assert check_classes(Named(CLASSES), info, "m") is False
    assert check_classes(Named(["bg", "a", "p"]), info, "m") is True  # same count, other names: a note
    with pytest.raises(DataError, match=r"Model m predicts 2 classes \(bg, fg\) but dataset .* has 3"):
        check_classes(Named(["bg", "fg"]), info, "m")


def test_score_model_scores_every_case_and_records_the_settings(hippocampus: Path, splits: Path) -> None:
    subset = load_subset(hippocampus, splits, "test")
    summary = score_model(Reference(hippocampus / "labelsTr", shifted=(IDS[2],)), subset, model="ref")
    assert [c.case for c in summary.cases] == IDS[1:] and summary.problems == []
    assert summary.settings == {
        "model": "ref",
        "dataset": str(hippocampus.resolve()),
        "splits": str(splits),
        "subset": "test",
    }
    dice = {c.case: c.metrics[1].dice for c in summary.cases}
    assert dice[IDS[1]] == 1.0 and dice[IDS[3]] == 1.0 and 0 < dice[IDS[2]] < 1

    metrics = summary_metrics(summary, "test")
    means = summary.class_means()
    assert metrics["test/dice/Anterior"] == pytest.approx(means["Anterior"]["dice"])
    assert metrics["test/hd95/Posterior"] == pytest.approx(means["Posterior"]["hd95"])
    assert metrics["test/dice_mean"] == pytest.approx(summary.foreground_mean()["dice"])
    assert metrics["test/dice_mean"] < 1
    assert {k.split("/")[1] for k in metrics} >= {"dice", "hd95", "asd", "dice_mean", "hd95_mean", "asd_mean"}
    assert not any(k.startswith("test/dice/background") for k in metrics)  # foreground classes only
    assert summary_params(summary) == {
        "model": "ref",
        "data": str(hippocampus.resolve()),
        "splits": str(splits),
        "spacing": "mm",
        "empty_policy": "strict",
        "n_cases": 3,
        "n_problems": 0,
    }


def test_score_model_with_a_real_predictor(
    hippocampus: Path, splits: Path, tiny_checkpoint, tmp_path
) -> None:
    from medcl.inference.predictor import Predictor

    predictor = Predictor.load(str(tiny_checkpoint(tmp_path / "model.pt")), device="cpu")
    subset = load_subset(hippocampus, splits, "test", max_cases=1)
    summary = score_model(predictor, subset, model="tiny", spacing="voxel")
    assert [c.case for c in summary.cases] == IDS[1:2] and summary.problems == []  # on the label's own grid
    assert summary.spacing == "voxel"
    assert 0 <= summary.foreground_mean()["dice"] <= 1


def test_score_folders_with_and_without_class_names(hippocampus: Path, tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for case in IDS[:2]:
        shutil.copy(hippocampus / "labelsTr" / f"{case}.nii.gz", gt)
        shutil.copy(hippocampus / "labelsTr" / f"{case}.nii.gz", pred)
    named = score_folders(pred, gt, hippocampus / "dataset.json")
    assert named.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert named.foreground_mean()["dice"] == 1.0 and named.problems == []
    numbered = score_folders(pred, gt, spacing="voxel")
    assert set(numbered.labels) == {0, 1, 2} and numbered.foreground_mean()["dice"] == 1.0


def test_metric_name_keeps_what_mlflow_accepts() -> None:
    assert metric_name("Left ventricle (LV)") == "Left ventricle _LV_"
    assert metric_name("a-b_c.d/e") == "a-b_c.d_e"


def test_log_summary_into_a_client_run(
    hippocampus: Path, splits: Path, tmp_path: Path, output_dir: Path
) -> None:
    summary = score_model(
        Reference(hippocampus / "labelsTr"), load_subset(hippocampus, splits, "test"), model="m"
    )
    files = summary.write(tmp_path / "summary.json")
    uri = f"sqlite:///{output_dir / 'mlflow.db'}"
    with tracking_uri_set(uri):
        store = ClientStore(uri, str(output_dir / "mlartifacts"))
        run = store.create_run(store.experiment("eval-test"), "evaluate", {})
        log_summary(run, summary, "val", files, params={**summary_params(summary), "subset": "val"})
        run.end()
    client = mlflow.MlflowClient(tracking_uri=uri)
    logged = client.get_run(run.run_id)
    assert logged.data.metrics == pytest.approx(summary_metrics(summary, "val"))
    assert logged.data.metrics["val/dice_mean"] == 1.0
    assert logged.data.params["subset"] == "val" and logged.data.params["n_cases"] == "3"
    assert {a.path for a in client.list_artifacts(run.run_id)} == {"summary.json", "summary.csv"}


def test_log_evaluation_run_makes_a_run_in_experiment_evaluation(
    hippocampus: Path, splits: Path, tmp_path: Path, output_dir: Path
) -> None:
    subset = load_subset(hippocampus, splits, "test")
    summary = score_model(Reference(hippocampus / "labelsTr", shifted=(IDS[1],)), subset, model="ref")
    files = summary.write(tmp_path / "summary.json")
    uri = f"sqlite:///{output_dir / 'mlflow.db'}"
    run_id = log_evaluation_run(
        (uri, str(output_dir / "mlartifacts")),
        summary,
        files,
        subset=subset,
        lineage={"run_id_elsewhere": "0" * 32},
    )
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "evaluation"
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("test-")
    tags = run.data.tags
    assert tags["medcl.model"] == "ref" and tags["medcl.subset"] == "test" and tags["medcl.problems"] == "0"
    assert tags["medcl.source_run_id_elsewhere"] == "0" * 32
    assert run.data.metrics == pytest.approx(summary_metrics(summary, "test"))
    assert run.data.params == {k: str(v) for k, v in summary_params(summary).items()}
    [dataset] = run.inputs.dataset_inputs
    tags = {t.key: t.value for t in dataset.tags}
    assert dataset.dataset.name == "Hippocampus" and tags["mlflow.data.context"] == "testing"
    assert tags["cases"] == "3"
    assert {a.path for a in client.list_artifacts(run_id)} == {"summary.json", "summary.csv"}
