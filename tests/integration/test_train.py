"""Real training runs on ../shared/data/Task04_Hippocampus: MLflow contents, resume, determinism."""

from __future__ import annotations

from pathlib import Path

import mlflow
import nibabel as nib
import pytest
import torch

from medcl.engine.run import train
from medcl.engine.trainer import Trainer
from medcl.runtime.checkpoint import load_checkpoint
from medcl.services.configs import build_config

pytestmark = (
    pytest.mark.slow
)  # end-to-end trainings on real data: `make test` runs it, `make test-fast` does not

FAST = [
    "model.features=[8, 8, 16, 32, 64, 8]",
    "data.batch_size=4",
    "data.num_workers=0",
    "val.sw_batch_size=64",
    "train.log_every=2",
]


def make_cfg(data: Path, splits: Path, output: Path, *extra: str):
    raw = {"method": {"name": "supervised"}}
    return build_config(
        raw, [f"data.path={data}", f"data.splits={splits}", f"output={output}", *FAST, *extra]
    )


def test_training_logs_params_metrics_artifacts_and_model(hippocampus, small_splits, output_dir) -> None:
    cfg = make_cfg(
        hippocampus, small_splits, output_dir, "train.steps=6", "val.every=3", "tracking.log_model=true"
    )
    result = train(cfg, progress=False)

    assert result.steps == 6 and result.best_step in (3, 6)
    assert 0.0 <= result.best_dice <= 1.0
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == str(cfg.optim.lr)
    assert run.data.params["method.name"] == "supervised"
    assert run.data.params["data.n_labeled"] == "6"
    steps = [m.step for m in client.get_metric_history(result.run_id, "train/loss")]
    assert steps == [2, 4, 6]
    for key in ("val/dice_mean", "val/dice/Anterior", "val/dice/Posterior", "val/hd95/Anterior", "train/lr"):
        assert key in run.data.metrics, key
    assert [m.step for m in client.get_metric_history(result.run_id, "val/dice_mean")] == [3, 6]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config", "checkpoints", "images"} <= artifacts, artifacts
    assert {a.path for a in client.list_artifacts(result.run_id, "config")} == {
        "config/resolved_config.json",
        "config/splits.json",
    }
    # Artifacts live beside the store, not in the current directory.
    assert str(output_dir) in run.info.artifact_uri
    # The logged model is a python_function segmenting whole volumes on their own grid (more in
    # tests/inference/test_mlflow_model.py); its second artifact, the bare network, takes any U-Net size.
    mlflow.set_tracking_uri(f"sqlite:///{output_dir / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(result.model_uri, model_config={"device": "cpu"})
    image = hippocampus / "imagesTr" / "hippocampus_001.nii.gz"
    assert model.predict(str(image)).shape == nib.load(image).shape
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri))
    network = torch.jit.load(str(local / "artifacts" / "network.ts"))
    assert network(torch.zeros(2, 1, 96, 96)).shape == (2, 3, 96, 96)
    # The best checkpoint carries what inference needs.
    state = load_checkpoint(result.best_checkpoint)
    assert state["data_spec"]["class_names"] == ["background", "Anterior", "Posterior"]
    assert state["config"]["data"]["patch_size"] == [64, 64]


def test_killed_run_resumes_to_the_same_weights(hippocampus, small_splits, output_dir, monkeypatch) -> None:
    common = ("train.steps=8", "train.checkpoint_every=3", "val.every=100", "tracking.log_model=false")
    straight = train(
        make_cfg(hippocampus, small_splits, output_dir, *common, "tracking.run_name=a"), progress=False
    )

    original = Trainer._train_step

    def crash_after_five(self, batch):
        if self.step == 5:
            raise RuntimeError("power cut")
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", crash_after_five)
    with pytest.raises(RuntimeError, match="power cut"):
        train(make_cfg(hippocampus, small_splits, output_dir, *common, "tracking.run_name=b"), progress=False)
    run_dir = output_dir / "runs" / "b"
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 3
    monkeypatch.setattr(Trainer, "_train_step", original)

    resumed = train(
        make_cfg(hippocampus, small_splits, output_dir, *common), resume=str(run_dir), progress=False
    )
    assert resumed.steps == 8
    a = load_checkpoint(straight.last_checkpoint)["model"]
    b = load_checkpoint(resumed.last_checkpoint)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    b_run = client.get_run(resumed.run_id)
    assert b_run.info.run_name == "b" and b_run.info.status == "FINISHED"
    losses = client.get_metric_history(resumed.run_id, "train/loss")
    assert max(m.step for m in losses) == 8
    assert all(torch.isfinite(torch.tensor(m.value)) for m in losses)


def test_existing_run_folder_is_not_overwritten(hippocampus, small_splits, output_dir) -> None:
    from medcl.errors import MedclError

    cfg = make_cfg(
        hippocampus,
        small_splits,
        output_dir,
        "train.steps=1",
        "tracking.run_name=same",
        "tracking.log_model=false",
    )
    train(cfg, progress=False)
    with pytest.raises(MedclError, match="already has checkpoints"):
        train(cfg, progress=False)


def test_resuming_a_finished_run_changes_nothing(hippocampus, small_splits, output_dir) -> None:
    from medcl.errors import MedclError

    cfg = make_cfg(hippocampus, small_splits, output_dir, "train.steps=2", "tracking.run_name=done")
    result = train(cfg, progress=False)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    models = client.search_logged_models(experiment_ids=[client.get_run(result.run_id).info.experiment_id])
    before = result.last_checkpoint.stat().st_mtime_ns
    with pytest.raises(MedclError, match="is finished .2 of 2 steps.*nothing was changed"):
        train(cfg, resume=str(result.run_dir), progress=False)
    assert result.last_checkpoint.stat().st_mtime_ns == before
    after = client.search_logged_models(experiment_ids=[client.get_run(result.run_id).info.experiment_id])
    assert len(after) == len(models) == 1


def test_init_copies_weights_from_a_checkpoint(hippocampus, small_splits, output_dir) -> None:
    base = ("train.steps=2", "val.every=100", "tracking.log_model=false")
    first = train(
        make_cfg(hippocampus, small_splits, output_dir, *base, "tracking.run_name=src"), progress=False
    )
    cfg = make_cfg(
        hippocampus,
        small_splits,
        output_dir,
        *base,
        "train.steps=1",
        f"init={first.last_checkpoint}",
        "optim.lr=1e-12",
        "optim.weight_decay=0",
        "tracking.run_name=dst",
    )
    second = train(cfg, progress=False)
    a = load_checkpoint(first.last_checkpoint)["model"]
    b = load_checkpoint(second.last_checkpoint)["model"]
    key = "net.net.conv_0.conv_0.conv.weight"
    torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
