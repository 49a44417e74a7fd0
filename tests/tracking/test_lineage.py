"""Lineage of runs (issue 14): code version, dataset inputs with a digest, evaluation linked to the model."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import medcl
from medcl.cli import main
from medcl.tracking import lineage
from medcl.tracking.lineage import case_files, code_tags, files_digest


def test_code_tags_name_the_version_and_the_commit_of_the_checkout() -> None:
    lineage.git_commit.cache_clear()
    tags = code_tags()
    assert tags["medcl.version"] == medcl.__version__
    root = Path(medcl.__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert head.returncode == 0, "the test suite runs from a git checkout of medcl (make test, .ci/run)"
    assert tags["medcl.git_commit"] == tags["mlflow.source.git.commit"] == head.stdout.strip()
    assert tags["medcl.git_dirty"] in ("true", "false")


def test_outside_a_checkout_or_without_git_only_the_version(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "medcl").mkdir()
    monkeypatch.setattr(medcl, "__file__", str(tmp_path / "medcl" / "__init__.py"))  # no .git above
    lineage.git_commit.cache_clear()
    assert code_tags() == {"medcl.version": medcl.__version__}
    (tmp_path / ".git").mkdir()  # a checkout, but git itself is missing

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    lineage.git_commit.cache_clear()
    assert code_tags() == {"medcl.version": medcl.__version__}
    lineage.git_commit.cache_clear()


def test_files_digest_follows_names_sizes_and_content_not_location(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "imagesTr").mkdir(parents=True)
        (root / "imagesTr" / "x.nii.gz").write_bytes(bytes(range(256)) * 1000)  # > 2 x 64 KiB
        (root / "imagesTr" / "y.nii.gz").write_bytes(b"small")
    files_a = sorted((a / "imagesTr").iterdir())
    digest = files_digest(files_a, a)
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert files_digest(sorted((b / "imagesTr").iterdir()), b) == digest  # a copied dataset digests alike
    assert files_digest([*reversed(files_a), files_a[0]], a) == digest  # order and repeats do not count
    data = bytearray((b / "imagesTr" / "x.nii.gz").read_bytes())
    data[-1] ^= 1  # the end of a file (a gzip's CRC) changes
    (b / "imagesTr" / "x.nii.gz").write_bytes(bytes(data))
    assert files_digest(sorted((b / "imagesTr").iterdir()), b) != digest
    (a / "imagesTr" / "y.nii.gz").rename(a / "imagesTr" / "z.nii.gz")
    assert files_digest(sorted((a / "imagesTr").iterdir()), a) != digest
    assert files_digest([a / "imagesTr"], a) == files_digest(sorted((a / "imagesTr").iterdir()), a)  # folders


def test_training_and_evaluation_runs_record_lineage(tiny_logged_model, hippocampus: Path, capsys) -> None:
    """The training run: version tags and training/validation dataset inputs. Its evaluation through the
    printed models:/ URI: tagged with the training run and model, the model as an input, the metrics on the
    model's page, and the same validation digest as training."""
    import mlflow

    from medcl.data.dataset import load_dataset

    result = tiny_logged_model
    out = result.run_dir.parent.parent
    store = f"sqlite:///{out / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store)
    [found] = client.search_runs([client.get_experiment_by_name("medcl").experiment_id])
    run_id = found.info.run_id
    train_run = client.get_run(run_id)
    assert train_run.data.tags["medcl.version"] == medcl.__version__
    inputs = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
        for d in train_run.inputs.dataset_inputs
    }
    assert set(inputs) == {"training", "validation"}
    info = load_dataset(hippocampus)
    splits = json.loads((result.run_dir / "splits.json").read_text())
    val_files = case_files(info.case(i) for i in splits["val"])
    assert inputs["validation"].digest == files_digest(val_files, info.root)
    train_files = [*case_files(info.case(i) for i in splits["labeled"]), info.root / "dataset.json"]
    assert inputs["training"].digest == files_digest(train_files, info.root)
    assert inputs["training"].name == info.name and inputs["training"].source_type == "local"

    model_id = result.model_uri.removeprefix("models:/")
    splits_path = out / "splits.json"
    args = ["evaluate", "--model", result.model_uri, "--data", str(hippocampus), "--splits", str(splits_path)]
    assert main([*args, "--subset", "val", "--runs", str(out), "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    [found] = client.search_runs([client.get_experiment_by_name("evaluation").experiment_id])
    evaluation = client.get_run(found.info.run_id)  # search results carry no model inputs
    tags = evaluation.data.tags
    assert tags["medcl.source_run_id"] == run_id and tags["medcl.source_model_id"] == model_id
    assert tags["medcl.version"] == medcl.__version__
    assert [m.model_id for m in evaluation.inputs.model_inputs] == [model_id]
    [scored] = evaluation.inputs.dataset_inputs
    assert scored.dataset.digest == inputs["validation"].digest  # the same cases as training validated on
    model_metrics = {
        m.key: m for m in client.get_logged_model(model_id).metrics if m.run_id == evaluation.info.run_id
    }
    assert model_metrics["val/dice_mean"].value == pytest.approx(evaluation.data.metrics["val/dice_mean"])
    assert model_metrics["val/dice_mean"].dataset_digest == scored.dataset.digest
    shutil.rmtree(out / "evaluations")
