"""MLflow tracking: the embedded SQLite store, run lifecycle, metrics, images, artifacts, the model.

The default store is ``sqlite:///<output>/mlflow.db`` with artifacts in ``<output>/mlartifacts``, both
resolved to absolute paths once and printed, so that ``medcl ui`` run from anywhere with the same
``--runs`` (or ``--tracking-uri``) opens the same store. ``--tracking-uri`` / ``MLFLOW_TRACKING_URI`` point
anywhere else. Only rank 0 of a distributed run tracks (SQLite has one writer); other ranks get a
:class:`NullTracker` with the same methods.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import MedclError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back during the block (main thread only), then raise KeyboardInterrupt.

    The Python-level handlers are swapped for one that only remembers the signal (a thread signal mask would
    not do: CPython runs handlers in the main thread whichever thread the kernel delivers the signal to).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise KeyboardInterrupt


def resolve_store(
    tracking_uri: str | None, output: str | Path, *, create: bool = True
) -> tuple[str, str | None]:
    """The tracking URI to use and, for the embedded store, the absolute artifact root.

    Precedence: explicit ``tracking_uri`` > ``MLFLOW_TRACKING_URI`` > ``sqlite:///<output>/mlflow.db``.

    Args:
        tracking_uri: ``--tracking-uri``, or None.
        output: the ``--runs`` folder.
        create: writers (training, evaluation runs) create the folder of a SQLite store; readers (model
            lookups, ``medcl ui``) pass False so that a mistyped folder is reported instead of becoming an
            empty store.

    Raises:
        MedclError: ``create`` is False and the SQLite database file does not exist.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and not uri.startswith("sqlite:///"):
        return uri, None
    if uri:
        db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
    else:
        db = Path(output).expanduser().resolve() / "mlflow.db"
    if create:
        db.parent.mkdir(parents=True, exist_ok=True)
    elif not db.is_file():
        raise MedclError(f"no MLflow store at {db}")
    return f"sqlite:///{db}", str(db.parent / "mlartifacts")


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<db>.lock`` beside a SQLite store (no-op for other stores).

    MLflow creates and migrates a new SQLite schema on the first call; two processes doing that at once (two
    trainings started together on a fresh ``--output``) fail with "table experiments already exists" or
    "duplicate column name". The lock makes the first caller build the schema and the others find it done.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(uri.removeprefix("sqlite:///") + ".lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed, also if the process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def get_or_create_experiment(name: str, artifact_root: str | None) -> str:
    """Experiment id for ``name``; new experiments store artifacts under ``artifact_root/<name>``.

    Without an explicit location MLflow would put a SQLite-store experiment's artifacts in ``./mlruns``
    relative to the current directory, i.e. somewhere different for every working directory.

    The lookup runs under :func:`store_lock`, since it is the first call that opens (and on a fresh store
    creates) the schema.
    """
    import mlflow

    from medcl.tracking.stores import remember_store

    remember_store(mlflow.get_tracking_uri())  # so that its runs and models are found from any folder
    with store_lock(mlflow.get_tracking_uri()):
        exp = mlflow.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = Path(artifact_root, name).as_uri() if artifact_root else None
        return mlflow.create_experiment(name, artifact_location=location)


def resolve_checkpoint(source: str, tracking_uri: str | None, output: str | Path) -> Path:
    """A local medcl checkpoint for ``source``.

    ``source`` may be a checkpoint file, a run folder, an MLflow run id or ``runs:/<id>`` (the run's
    checkpoint: ``best.pt`` of a segmenting run, ``last.pt`` of a pretraining run, see
    :data:`CHECKPOINT_NAMES`), a ``runs:/<id>/<path>`` URI (a file, or a folder such as
    ``checkpoints``), or ``models:/<name>@<alias>`` /
    ``models:/<name>/<version>`` or ``models:/m-<id>`` (the inference checkpoint logged inside the model).

    Ids and URIs are looked up in the store of ``tracking_uri`` / ``output``, then in every store medcl has
    written to (:mod:`medcl.tracking.stores`), so what ``medcl train`` prints works from any folder. A lookup
    only reads: a missing SQLite store is skipped, it is never created.

    Raises:
        MedclError: ``source`` is none of these, or names a run or model that the store does not hold.
    """
    from medcl.tracking.stores import find_checkpoint

    return find_checkpoint(source, tracking_uri, output)[0]


#: The checkpoint a run (folder, id or ``runs:/`` URI) stands for, in order of preference: the best validation
#: (segmenting methods), the slim inference copy, else the last step (pretraining, which never validates).
CHECKPOINT_NAMES = ("best.pt", "model.pt", "last.pt")


def pick_checkpoint(folder: Path) -> Path:
    """The checkpoint of a run folder (``checkpoints/<name>``) or of a folder of checkpoints (``<name>``).

    Raises:
        MedclError: The folder holds none of :data:`CHECKPOINT_NAMES`.
    """
    for name in CHECKPOINT_NAMES:
        for candidate in (folder / "checkpoints" / name, folder / name):
            if candidate.is_file():
                return candidate
    raise MedclError(
        f"{folder} is a folder without a checkpoint ({', '.join(CHECKPOINT_NAMES)}, directly or in checkpoints/)"
    )


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line reports."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


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
        try:
            self.experiment_id = get_or_create_experiment(experiment, artifact_root)
        except Exception as exc:  # SQLAlchemy/MLflow errors come with pages of SQL; one line is enough
            raise MedclError(f"cannot open the MLflow store {tracking_uri}: {_first_line(exc)}") from exc
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

    def log_metrics(
        self, metrics: dict[str, float], step: int, model_id: str | None = None, dataset: Any = None
    ) -> None:
        """Log the finite values; ``model_id`` attaches them to a logged model too (MLflow 3), ``dataset``
        records which data they were computed on."""
        finite = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
        if finite:
            extra = {k: v for k, v in (("model_id", model_id), ("dataset", dataset)) if v is not None}
            self.mlflow.log_metrics(finite, step=step, **extra)

    def log_model_input(self, model_id: str) -> None:
        """Record a logged model as an input of this run (an evaluation of it); never fails the run."""
        from mlflow.entities import LoggedModelInput

        try:
            self.mlflow.log_input(model=LoggedModelInput(model_id=model_id))
        except Exception as exc:
            log.warning("the evaluated model %s was not linked to the run: %s", model_id, exc)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self.mlflow.log_dict(data, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.mlflow.log_artifact(str(path), artifact_path)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self.mlflow.log_image(image, key=key, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)

    def log_datasets(
        self, name: str, root: Path, inputs: list[tuple[str, list[Path], int]]
    ) -> dict[str, Any]:
        """Log each ``(context, files, cases)`` as an MLflow dataset input named ``name`` with a digest of the
        files (:mod:`medcl.tracking.lineage`); return the logged datasets by context."""
        from medcl.tracking.lineage import log_dataset

        logged = {}
        for context, files, cases in inputs:
            dataset = log_dataset(self.mlflow, name, root, files, context, cases)
            if dataset is not None:
                logged[context] = dataset
        return logged

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status``; a Ctrl-C or SIGTERM arriving meanwhile waits until the run is ended.

        Without that, a second Ctrl-C during the first one's clean-up interrupted ``end_run`` and left the run
        RUNNING in the store. Calling ``end`` again is harmless (no active run: nothing to do).
        """
        with _signals_deferred():
            self.mlflow.end_run(status=status)
        if self._env_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = self._env_uri
