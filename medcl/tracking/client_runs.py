"""Runs created, logged and ended by id through an ``MlflowClient``: the runs of a workflow.

A workflow keeps its parent run open for all its stages, and a training stage starts its own fluent run
(:func:`medcl.engine.run.train`) meanwhile. MLflow's fluent API allows one active run per thread, so the
workflow's own runs (the parent, and the child runs of the ``split``, ``evaluate`` and ``infer`` stages) go
through the client instead: :class:`ClientStore` creates and finds them, :class:`ClientRun` logs into one.
:class:`ClientRun` has the logging methods of :class:`~medcl.tracking.mlflow_tracking.MlflowTracker` that
services use (``log_params``, ``log_metrics``, ``log_artifact``, ``set_tags``), so a service logs into either.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medcl.tracking.mlflow_tracking import get_or_create_experiment

#: The longest param value MLflow stores; longer values are cut.
MAX_PARAM_CHARS = 6000


@contextlib.contextmanager
def tracking_uri_set(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for the block, then give ``MLFLOW_TRACKING_URI`` its old value.

    ``mlflow.set_tracking_uri`` exports the variable; restoring it keeps a later command in the same process
    resolving its own store.
    """
    import mlflow

    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if env_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_uri


def end_active_run(status: str) -> None:
    """End the fluent run left active in this thread, if any (a training that failed outside its own
    ``try``/``finally``), with ``status``."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.end_run(status=status)


class ClientRun:
    """One run of a store, logged by id (it need not be the active run).

    Args:
        client: The store's ``MlflowClient``.
        run_id: The run.
    """

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @property
    def status(self) -> str:
        """``RUNNING``, ``FINISHED``, ``FAILED``, ``KILLED`` or ``SCHEDULED``, as the store has it now."""
        return self.client.get_run(self.run_id).info.status

    @property
    def params(self) -> dict[str, str]:
        """The params logged so far."""
        return self.client.get_run(self.run_id).data.params

    def log_param(self, key: str, value: Any) -> None:
        """Log ``str(value)`` (cut to :data:`MAX_PARAM_CHARS`)."""
        self.client.log_param(self.run_id, key, str(value)[:MAX_PARAM_CHARS])

    def log_params(self, params: dict[str, Any]) -> None:
        for key, value in params.items():
            self.log_param(key, value)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log each value as a float (``step`` None: MLflow's default, 0)."""
        for key, value in metrics.items():
            if step is None:
                self.client.log_metric(self.run_id, key, float(value))
            else:
                self.client.log_metric(self.run_id, key, float(value), step=step)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.set_tag(key, value)

    def reopen(self) -> None:
        """Mark a finished or failed run ``RUNNING`` again (a resumed workflow's parent run)."""
        self.client.update_run(self.run_id, status="RUNNING")

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ended with ``status``."""
        self.client.set_terminated(self.run_id, status)


class ClientStore:
    """One MLflow store, reached through a client.

    Args:
        uri: The tracking URI (see :func:`~medcl.tracking.mlflow_tracking.resolve_store`).
        artifact_root: Where new experiments keep their artifacts (``<root>/<experiment>``); None: MLflow's
            default for the store.
    """

    def __init__(self, uri: str, artifact_root: str | None = None) -> None:
        import mlflow

        self.uri = uri
        self.artifact_root = artifact_root
        self.client = mlflow.MlflowClient(tracking_uri=uri)

    def experiment(self, name: str) -> str:
        """The id of experiment ``name``, created if needed (call inside :func:`tracking_uri_set`)."""
        return get_or_create_experiment(name, self.artifact_root)

    def create_run(self, experiment_id: str, run_name: str | None, tags: dict[str, str]) -> ClientRun:
        """A new ``RUNNING`` run; it stays open until :meth:`ClientRun.end`."""
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        return ClientRun(self.client, run.info.run_id)

    def run(self, run_id: str) -> ClientRun:
        """An existing run, by id."""
        return ClientRun(self.client, run_id)

    def find_run(self, experiment_id: str, tags: dict[str, str]) -> ClientRun | None:
        """A run of the experiment holding every tag of ``tags`` with that value, or None."""
        filter_string = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
        runs = self.client.search_runs([experiment_id], filter_string=filter_string, max_results=1)
        return ClientRun(self.client, runs[0].info.run_id) if runs else None

    def register_model(self, model_uri: str, name: str, alias: str, tags: dict[str, str]) -> str:
        """Register ``model_uri`` as a new version of ``name``, point ``alias`` at it; return the version.

        The registry is the fluent API's (call inside :func:`tracking_uri_set`).
        """
        import mlflow

        version = mlflow.register_model(model_uri, name, tags=tags)
        self.client.set_registered_model_alias(name, alias, version.version)
        return str(version.version)
