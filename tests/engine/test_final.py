"""The end of a run: the best checkpoint, its summary, and the deployable MLflow model."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import torch

from medcl.engine.final import log_deployable_model, log_final, torchscript_network
from medcl.engine.trainer import TrainResult
from medcl.methods import DataSpec
from medcl.services.configs import build_config
from medcl.tracking.mlflow_tracking import MlflowTracker, NullTracker

SPEC = DataSpec(1, 3, ("background", "Anterior", "Posterior"), 2, (64, 64))


class Recorder:
    """A tracker that records what it is asked to log."""

    active = False  # like NullTracker: no MLflow model

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any]] = []

    def log_artifact(self, path, folder) -> None:
        self.calls.append(("artifact", Path(path).name, folder))

    def log_dict(self, data, name) -> None:
        self.calls.append(("dict", data, name))


def result(tmp_path: Path, best: bool) -> TrainResult:
    for name in ("best.pt", "last.pt"):
        (tmp_path / name).write_bytes(b"x")
    return TrainResult(
        run_id=None,
        run_dir=tmp_path,
        steps=10,
        best_step=6 if best else None,
        best_dice=0.75 if best else None,
        best_per_class={"Anterior": {"dice": 0.7}, "Posterior": {"dice": 0.8}} if best else {},
        best_checkpoint=tmp_path / "best.pt" if best else None,
        last_checkpoint=tmp_path / "last.pt",
    )


def test_log_final_logs_the_best_checkpoint_and_its_summary(tmp_path: Path) -> None:
    trainer = SimpleNamespace(cfg=build_config({}, ["tracking.log_model=false"]))
    tracker = Recorder()
    log_final(tracker, trainer, result(tmp_path, best=True), SPEC)
    assert tracker.calls == [
        ("artifact", "best.pt", "checkpoints"),
        (
            "dict",
            {
                "best_step": 6,
                "val_dice_mean": 0.75,
                "per_class": {"Anterior": {"dice": 0.7}, "Posterior": {"dice": 0.8}},
            },
            "val/best_summary.json",
        ),
    ]
    # No validation ran (label-free pretraining): the last checkpoint is the run's only one.
    tracker = Recorder()
    log_final(tracker, trainer, result(tmp_path, best=False), SPEC)
    assert tracker.calls == [("artifact", "last.pt", "checkpoints")]


def test_tracking_off_logs_no_model(tiny_checkpoint, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    assert log_deployable_model(NullTracker(), ckpt, None) is None
    assert not (tmp_path / "mlruns").exists()


def test_the_logged_model_holds_the_checkpoint_and_the_torchscript_network(
    tiny_checkpoint, output_dir: Path, tmp_path: Path
) -> None:
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    network = torchscript_network(ckpt)
    assert network == tmp_path / "network.ts"
    assert torch.jit.load(str(network))(torch.zeros(2, 1, 96, 80)).shape == (2, 3, 96, 80)  # any U-Net size
    uri = f"sqlite:///{output_dir / 'mlflow.db'}"
    tracker = MlflowTracker(uri, str(output_dir / "mlartifacts"), "final")
    tracker.start(run_name="r")
    try:
        model_uri = log_deployable_model(tracker, ckpt, network)
    finally:
        tracker.end()
    assert model_uri.startswith("models:/")
    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "download")))
    assert (local / "artifacts" / "model.pt").read_bytes() == ckpt.read_bytes()
    assert (local / "artifacts" / "network.ts").is_file()


def test_failures_are_warnings_not_a_lost_run(
    tiny_checkpoint, output_dir: Path, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="medcl.engine.final")
    broken = tmp_path / "model.pt"
    broken.write_bytes(b"not a checkpoint")
    assert torchscript_network(broken) is None
    assert "the logged model has no TorchScript network" in caplog.text
    tracker = MlflowTracker(f"sqlite:///{output_dir / 'mlflow.db'}", str(output_dir / "mlartifacts"), "final")
    tracker.start(run_name="r")
    try:
        assert log_deployable_model(tracker, tmp_path / "missing.pt", None) is None
    finally:
        tracker.end()
    assert "could not log the MLflow model" in caplog.text
