"""The MLflow run of a suggestion, nested under the run that trained the model when the store has it."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcl.suggest.ranking import SuggestResult

__all__ = ["log_to_mlflow", "model_run_of"]

log = logging.getLogger(__name__)


def model_run_of(source: str, predictor_run: str | None) -> str | None:
    """The MLflow run that trained the model: the checkpoint's record, else a run id in ``source``."""
    if predictor_run:
        return predictor_run
    match = re.fullmatch(r"(?:runs:/)?([0-9a-f]{32})(?:/.*)?", source)
    return match.group(1) if match else None


def log_to_mlflow(
    result: SuggestResult,
    files: Sequence[Path],
    *,
    store: tuple[str, str | None],
    extra_params: dict[str, Any] | None = None,
) -> tuple[str, str | None]:
    """A run holding the suggestion: nested under the model's run when the store has it.

    The run goes into the model run's experiment with ``mlflow.parentRunId`` set (the MLflow UI shows it
    under the training run); a model from elsewhere gets a run in experiment ``suggestions``. Params: strategy,
    budget, pool size, group_by; metric ``suggest/seconds_per_case``; the files as artifacts.

    Args:
        result: The suggestion.
        files: Logged under ``suggest/`` (the CSV, the montage, the new splits).
        store: ``(tracking URI, artifact root or None)`` of the store that gets the run.
        extra_params: More params (the data and splits given).

    Returns:
        ``(run id, parent run id or None)``.
    """
    import mlflow

    from medcl.tracking.mlflow_tracking import MlflowTracker

    uri, artifact_root = store
    parent = result.model_run
    experiment = "suggestions"
    if parent:
        try:
            run = mlflow.MlflowClient(tracking_uri=uri).get_run(parent)
            experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment(run.info.experiment_id).name
        except Exception:  # the model's run lives in another store: link by tag only
            log.info("model run %s is not in %s; the suggestion run is not nested", parent, uri)
            parent = None
    tracker = MlflowTracker(uri, artifact_root, experiment)
    tags = {
        "medcl.command": "suggest",
        "medcl.strategy": result.strategy,
        "medcl.model": result.model,
        **({"medcl.model_run": result.model_run} if result.model_run else {}),
        **({"mlflow.parentRunId": parent} if parent else {}),
    }
    run_id = tracker.start(run_name=f"suggest-{result.strategy}-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags)
    try:
        tracker.log_params(
            {
                "strategy": result.strategy,
                "budget": result.budget,
                "pool_groups": len(result.rows),
                "pool_cases": sum(len(r.cases) for r in result.rows),
                "group_by": result.group_by or "",
                "model": result.model,
                **(extra_params or {}),
            }
        )
        tracker.log_metrics({"suggest/seconds_per_case": result.seconds_per_case}, step=0)
        tracker.log_dict(
            {
                "suggested": [
                    {"rank": r.rank, "case": r.case, "score": r.score, "cases": r.cases}
                    for r in result.suggested
                ]
            },
            "suggest/suggested.json",
        )
        for f in files:
            tracker.log_artifact(f, "suggest")
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    return run_id, parent
