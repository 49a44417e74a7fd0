"""The end of a run: the best checkpoint, its summary and the deployable MLflow model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medcl.engine.trainer import Trainer, TrainResult
from medcl.methods import DataSpec
from medcl.runtime.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def log_final(tracker: Any, trainer: Trainer, result: TrainResult, spec: DataSpec) -> None:
    """Best checkpoint and the best network as an MLflow model."""
    if result.best_checkpoint is None:
        if result.last_checkpoint and result.last_checkpoint.exists():
            tracker.log_artifact(result.last_checkpoint, "checkpoints")
        return
    tracker.log_artifact(result.best_checkpoint, "checkpoints")
    tracker.log_dict(
        {
            "best_step": result.best_step,
            "val_dice_mean": result.best_dice,
            "per_class": result.best_per_class,
        },
        "val/best_summary.json",
    )
    if trainer.cfg.tracking.log_model:
        state = load_checkpoint(result.best_checkpoint)
        trainer.method.load_state_dict(state["model"])
        # The inference checkpoint (weights + config + classes, no optimiser) travels inside the MLflow model,
        # so `models:/<name>@<alias>` carries its preprocessing.
        keys = (
            "step",
            "method",
            "config",
            "data_spec",
            "model",
            "medcl_version",
            "mlflow_run_id",
            "label_cases",
        )
        slim = {k: state[k] for k in keys if k in state}  # the run id: models:/ URIs keep their lineage
        slim_path = save_checkpoint(slim, result.best_checkpoint.parent / "model.pt")
        network = torchscript_network(slim_path)
        result.model_uri = log_deployable_model(tracker, slim_path, network)


def torchscript_network(checkpoint: Path) -> Path | None:
    """``network.ts`` beside ``checkpoint``: the bare network for the logged model's second artifact.

    Scripted without the export round-trip check (``medcl export`` runs it) to keep the end of training
    short; a network that cannot be scripted is left out with a warning, the model is logged all the same.
    """
    from medcl.inference.export import to_torchscript
    from medcl.inference.predictor import Predictor

    try:
        predictor = Predictor.load(str(checkpoint), device="cpu", precision="fp32")
        return to_torchscript(predictor, checkpoint.with_name("network.ts"), check=False, trace=False)
    except Exception as exc:
        log.warning("the logged model has no TorchScript network (%s); its checkpoint is complete", exc)
        return None


def log_deployable_model(
    tracker: Any, checkpoint: Path, network: Path | None, name: str = "model"
) -> str | None:
    """Log the deployable model on the tracker's run: a ``python_function`` segmenting paths or arrays.

    See :mod:`medcl.inference.mlflow_model`: medcl's source travels in the model (``code_paths``), the
    inference ``checkpoint`` is its weights, and ``network`` (TorchScript of the bare network), when given,
    is a second artifact. Returns the model URI, or None when tracking is off or logging failed (a warning:
    a logging failure must not lose the finished run; the checkpoint artifact is logged all the same).
    """
    if not getattr(tracker, "active", False):  # NullTracker: tracking is off
        return None
    from medcl.inference.mlflow_model import log_segmentation_model

    try:
        return log_segmentation_model(checkpoint, network, name=name).model_uri
    except Exception as exc:
        log.warning("could not log the MLflow model (%s); the checkpoint artifact is still logged", exc)
        return None
