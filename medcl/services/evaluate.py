"""Score segmentations and log the scores: ``medcl evaluate`` and a workflow's ``evaluate`` stage.

Two ways in: label maps already on disk (:func:`score_folders`), or a model that segments the cases of a
splits subset first (:func:`load_subset`, :func:`check_classes`, :func:`score_model`). Either gives a
:class:`~medcl.evaluation.report.Summary`. :func:`log_summary` logs one into any run (the metric names
are :func:`summary_metrics`'); :func:`log_evaluation_run` makes the run ``medcl evaluate`` logs into.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medcl.errors import DataError

if TYPE_CHECKING:
    from medcl.data.dataset import DatasetInfo
    from medcl.data.splits import Splits
    from medcl.evaluation.report import Summary

#: The metrics of a summary logged per class and as the foreground mean.
METRICS = ("dice", "hd95", "asd")
#: The dataset-input context of the cases of each subset (the val cases digest as the training run's did).
CONTEXTS = {"test": "testing", "val": "validation"}


@dataclass
class Subset:
    """The cases of one subset of a splits file, checked against their dataset.

    Attributes:
        info: The dataset.
        splits: The splits file's contents (``splits.path`` is the file).
        name: ``"val"`` or ``"test"``.
        ids: The case ids to score, in the splits file's order.
    """

    info: DatasetInfo
    splits: Splits
    name: str
    ids: list[str]

    @property
    def cases(self) -> list[Any]:
        """The :class:`~medcl.data.dataset.Case` of each id."""
        return [self.info.case(case_id) for case_id in self.ids]


def load_subset(
    data: str | Path,
    splits_file: str | Path,
    subset: str,
    *,
    max_cases: int | None = None,
    option: str = "subset",
) -> Subset:
    """Load a dataset and a splits file, check they agree, and take the ``subset`` cases.

    Args:
        data: The dataset folder.
        splits_file: A splits file of that dataset.
        subset: ``"val"`` or ``"test"``.
        max_cases: Keep only the first N cases (quick checks); None: all.
        option: How the caller names the subset choice, for the message when it is empty.

    Raises:
        MedclError: The dataset or the splits cannot be read, name cases the other lacks, or the subset is
            empty.
    """
    from medcl.data.dataset import load_dataset
    from medcl.data.splits import Splits

    info = load_dataset(data)
    splits = Splits.load(splits_file)
    splits.check_against(info)
    ids = list(getattr(splits, subset))[:max_cases]
    if not ids:
        raise DataError(f"Splits file {splits.path} has no {subset!r} cases; choose the other {option}.")
    return Subset(info, splits, subset, ids)


def check_classes(predictor: Any, info: DatasetInfo, model: str) -> bool:
    """Fail when ``predictor`` predicts another number of classes than ``info`` has.

    Returns:
        Whether the class names differ (classes are matched by value and named as in the dataset).

    Raises:
        DataError: The class counts differ.
    """
    names = list(predictor.class_names)
    if len(names) != info.num_classes:
        raise DataError(
            f"Model {model} predicts {len(names)} classes ({', '.join(names)}) but dataset {info.root} has "
            f"{info.num_classes} ({', '.join(info.class_names)}); evaluate it on the dataset it was trained for."
        )
    return names != list(info.class_names)


def score_model(
    predictor: Any,
    subset: Subset,
    *,
    model: str,
    spacing: str = "mm",
    empty_policy: str = "strict",
    progress: bool = False,
    uncertainty: bool = False,
) -> Summary:
    """Segment every case of ``subset`` with ``predictor`` and score it against its label file.

    Args:
        predictor: Anything with ``segment(image_paths)`` (a :class:`~medcl.inference.predictor.Predictor`).
        subset: The cases (:func:`load_subset`).
        model: The model as the user gave it, recorded in ``summary.settings``.
        spacing: ``"mm"`` or ``"voxel"``: the unit of HD95 and ASD.
        empty_policy: ``"strict"`` or ``"ssl4mis"``.
        progress: Draw a progress bar.
        uncertainty: Also score the predictor's uncertainty map against its errors
            (:mod:`medcl.evaluation.uncertainty`).

    Returns:
        The summary; ``settings`` holds the model, dataset, splits file and subset.
    """
    from medcl.evaluation.summary import evaluate_predictor

    summary = evaluate_predictor(
        predictor,
        subset.cases,
        subset.info.labels,
        spacing,
        empty_policy,
        progress=progress,
        uncertainty=uncertainty,
    )
    summary.settings.update(
        {
            "model": model,
            "dataset": str(subset.info.root),
            "splits": str(subset.splits.path),
            "subset": subset.name,
        }
    )
    return summary


def score_folders(
    pred: str | Path,
    gt: str | Path,
    labels: str | Path | None = None,
    *,
    spacing: str = "mm",
    empty_policy: str = "strict",
    progress: bool = False,
) -> Summary:
    """Score the label maps of ``pred`` against those of ``gt`` with the same file names.

    Args:
        pred: Folder of predicted label maps.
        gt: Folder of reference label maps.
        labels: ``dataset.json`` (or its folder) naming the classes; None: the values found in ``gt``.
        spacing: ``"mm"`` or ``"voxel"``.
        empty_policy: ``"strict"`` or ``"ssl4mis"``.
        progress: Draw a progress bar.
    """
    from medcl.evaluation.label_maps import infer_labels, load_labels
    from medcl.evaluation.summary import evaluate_folders

    names = load_labels(labels) if labels else infer_labels(gt)
    return evaluate_folders(pred, gt, names, spacing, empty_policy, progress=progress)


def metric_name(name: str) -> str:
    """A class name as MLflow accepts it in a metric key (letters, digits, ``_-. /``)."""
    return re.sub(r"[^\w\-. ]", "_", name)


def summary_metrics(summary: Summary, prefix: str) -> dict[str, float]:
    """``<prefix>/<metric>/<class>`` per class and ``<prefix>/<metric>_mean`` over the foreground classes,
    for Dice, HD95 and ASD; undefined values are left out."""
    means = summary.class_means()
    metrics: dict[str, float] = {}
    for name, stats in means.items():
        for metric in METRICS:
            if stats[metric] is not None:
                metrics[f"{prefix}/{metric}/{metric_name(name)}"] = float(stats[metric])
    fg = summary.foreground_mean(means)
    for metric in METRICS:
        if fg[metric] is not None:
            metrics[f"{prefix}/{metric}_mean"] = float(fg[metric])
    scores = summary.uncertainty_summary()
    for key in ("error_auroc_mean", "case_error_spearman"):
        if scores is not None and scores[key] is not None:
            metrics[f"{prefix}/uncertainty/{key}"] = float(scores[key])
    return metrics


def summary_params(summary: Summary) -> dict[str, Any]:
    """The params of an evaluation: what was scored, how, and how many cases."""
    return {
        "model": summary.settings["model"],
        "data": summary.settings["dataset"],
        "splits": summary.settings["splits"],
        "spacing": summary.spacing,
        "empty_policy": summary.empty_policy,
        "n_cases": len(summary.cases),
        "n_problems": len(summary.problems),
    }


def log_summary(
    run: Any,
    summary: Summary,
    prefix: str,
    files: tuple[Path, Path],
    *,
    params: dict[str, Any],
    **metric_options: Any,
) -> None:
    """Log an evaluation into ``run`` (an ``MlflowTracker`` or a :class:`~medcl.tracking.client_runs.ClientRun`).

    Args:
        run: The run.
        summary: The scores.
        prefix: The metric prefix, the subset (``test/dice_mean``).
        files: The summary's JSON and CSV files, logged as artifacts.
        params: The params (:func:`summary_params`, plus what the caller adds).
        metric_options: Passed on with the metrics (``model_id``, ``dataset`` of an ``MlflowTracker``).
    """
    run.log_params(params)
    run.log_metrics(summary_metrics(summary, prefix), step=0, **metric_options)
    for path in files:
        run.log_artifact(path)


def log_evaluation_run(
    store: tuple[str, str | None],
    summary: Summary,
    files: tuple[Path, Path],
    *,
    subset: Subset | None = None,
    lineage: dict[str, str] | None = None,
) -> str:
    """A new run in experiment ``evaluation``: tags, settings as params, ``<subset>/...`` metrics, the files.

    Lineage (MLflow 3): ``lineage`` names the training run and logged model that were scored, when they are in
    this store (``run_id``, ``model_id``; ``*_elsewhere`` when they are in another store). The run is tagged
    with both (``medcl.source_run_id``, ``medcl.source_model_id``), takes the logged model as an input
    (``mlflow.log_input(model=...)``) and logs its metrics with ``model_id``, so they appear on the model's
    page beside the training run's; the scored cases (``subset``) are a dataset input (context ``testing``
    or ``validation``) whose digest the metrics also carry.

    Args:
        store: ``(tracking URI, artifact root or None)`` (:func:`medcl.tracking.stores.results_store`).
        summary: The scores; ``settings`` names the model and subset (:func:`score_model`).
        files: The summary's JSON and CSV files.
        subset: The scored cases, logged as the run's dataset input.
        lineage: The training run and logged model (:func:`medcl.tracking.lineage.model_lineage`).

    Returns:
        The run id.
    """
    from medcl.tracking.lineage import case_files, code_tags
    from medcl.tracking.mlflow_tracking import MlflowTracker

    lineage = lineage or {}
    uri, artifact_root = store
    tracker = MlflowTracker(uri, artifact_root, "evaluation")
    prefix = summary.settings["subset"]
    source_tags = {f"medcl.source_{key}": value for key, value in lineage.items()}
    run_id = tracker.start(
        run_name=f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            "medcl.model": summary.settings["model"],
            "medcl.subset": prefix,
            "medcl.problems": str(len(summary.problems)),
            **source_tags,
            **code_tags(),
        },
    )
    try:
        dataset = None
        if subset is not None:
            cases = subset.cases
            inputs = [(CONTEXTS.get(prefix, prefix), case_files(cases), len(cases))]
            dataset = tracker.log_datasets(subset.info.name, subset.info.root, inputs).get(inputs[0][0])
        model_id = lineage.get("model_id")
        if model_id:
            tracker.log_model_input(model_id)
        log_summary(
            tracker,
            summary,
            prefix,
            files,
            params=summary_params(summary),
            model_id=model_id,
            dataset=dataset,
        )
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    return run_id
