"""MLflow tracking: the embedded SQLite store, run lifecycle, metrics, images, artifacts, the model.

The default store is ``sqlite:///<output>/mlflow.db`` with artifacts in ``<output>/mlartifacts``, both
resolved to absolute paths once and printed, so that ``medcl ui`` run from anywhere with the same
``--output`` (or ``--tracking-uri``) opens the same store. ``--tracking-uri`` / ``MLFLOW_TRACKING_URI`` point
anywhere else. Only rank 0 of a distributed run tracks (SQLite has one writer); other ranks get a
:class:`NullTracker` with the same methods.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def resolve_store(tracking_uri: str | None, output: str | Path) -> tuple[str, str | None]:
    """The tracking URI to use and, for the embedded store, the absolute artifact root.

    Precedence: explicit ``tracking_uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<output>/mlflow.db``.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
            db.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{db}", str(db.parent / "mlartifacts")
        return uri, None
    out = Path(output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{out / 'mlflow.db'}", str(out / "mlartifacts")


def get_or_create_experiment(name: str, artifact_root: str | None) -> str:
    """Experiment id for ``name``; new experiments store artifacts under ``artifact_root/<name>``.

    Without an explicit location MLflow would put a SQLite-store experiment's artifacts in ``./mlruns``
    relative to the current directory, i.e. somewhere different for every working directory.
    """
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = Path(artifact_root, name).as_uri() if artifact_root else None
    return mlflow.create_experiment(name, artifact_location=location)


def resolve_checkpoint(source: str, tracking_uri: str | None, output: str | Path) -> Path:
    """A local medcl checkpoint for ``source``.

    ``source`` may be a checkpoint file, a run folder (``checkpoints/best.pt``), an MLflow run id
    (its ``checkpoints/best.pt`` artifact), a ``runs:/<id>/<path>`` URI, or ``models:/<name>@<alias>`` /
    ``models:/<name>/<version>`` (the inference checkpoint logged inside the model).
    """
    from medcl.errors import MedclError

    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in ("checkpoints/best.pt", "checkpoints/model.pt", "checkpoints/last.pt", "best.pt"):
            if (path / candidate).is_file():
                return path / candidate
        raise MedclError(f"{path} is a folder without checkpoints/best.pt or last.pt")
    import mlflow

    uri, _ = resolve_store(tracking_uri, output)
    try:
        if source.startswith("models:/"):
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=uri, registry_uri=uri)
            )
            found = sorted(local.rglob("model.pt"))
            if not found:
                raise MedclError(f"{source} holds no medcl inference checkpoint (extra_files/model.pt)")
            return found[0]
        artifact = source if source.startswith("runs:/") else f"runs:/{source}/checkpoints/best.pt"
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact, tracking_uri=uri))
    except MedclError:
        raise
    except Exception as exc:
        hint = "" if len(source) == 32 or "/" in source else " (not a file, folder, run id or MLflow URI)"
        raise MedclError(f"cannot find model {source!r} in MLflow store {uri}{hint}: {exc}") from None


class NullTracker:
    """A tracker that records nothing (non-zero DDP ranks, ``tracking: none`` in tests of the engine)."""

    run_id: str | None = None
    active = False

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class MlflowTracker:
    """One MLflow run: start (or resume), log, end."""

    active = True

    def __init__(self, tracking_uri: str, artifact_root: str | None, experiment: str) -> None:
        import mlflow

        self.mlflow = mlflow
        self.tracking_uri = tracking_uri
        # set_tracking_uri also exports MLFLOW_TRACKING_URI; remember the user's value to restore it at the end,
        # so a later run in the same process resolves its own store.
        self._env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.artifact_root = artifact_root
        mlflow.set_tracking_uri(tracking_uri)
        self.experiment_id = get_or_create_experiment(experiment, artifact_root)
        self.run_id: str | None = None

    def start(
        self,
        run_name: str | None = None,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        system_metrics: bool = False,
    ) -> str:
        """Start a new run, or reopen ``run_id`` when resuming."""
        run = self.mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else self.experiment_id,
            run_name=None if run_id else run_name,
            tags=tags,
            log_system_metrics=system_metrics,
        )
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Log flattened params; long values are truncated (the full config is logged as an artifact)."""
        clean = {k: (str(v) if len(str(v)) <= 500 else str(v)[:497] + "...") for k, v in params.items()}
        existing = self.mlflow.get_run(self.run_id).data.params
        self.mlflow.log_params({k: v for k, v in clean.items() if k not in existing})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
        if finite:
            self.mlflow.log_metrics(finite, step=step)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self.mlflow.log_dict(data, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.mlflow.log_artifact(str(path), artifact_path)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self.mlflow.log_image(image, key=key, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)

    def log_model(
        self, net: Any, example: Any, name: str = "model", extra_files: list[str] | None = None
    ) -> str | None:
        """Log the bare network as an MLflow PyTorch model (``torch.export`` format, needs no medcl to load).

        The export is traced at the sliding-window ROI size with batch 2, which is what inference feeds it;
        requirements are given explicitly because inferring them takes seconds.
        """
        import monai
        import torch

        try:
            info = self.mlflow.pytorch.log_model(
                net,
                name=name,
                input_example=example.numpy(),
                extra_files=extra_files,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"monai=={monai.__version__}"],
            )
            return info.model_uri
        except Exception as exc:  # an export failure must not lose the finished run
            log.warning("could not log the MLflow model (%s); the checkpoint artifact is still logged", exc)
            return None

    def end(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)
        if self._env_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = self._env_uri
