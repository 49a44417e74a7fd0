"""``medcl evaluate``: Dice, HD95 and ASD per case and class, from prediction folders or from a model.

Folder mode scores the label files of ``--pred`` against those of ``--gt``; model mode segments the
``--subset`` cases of a splits file with a trained model, scores them and logs the result to a new MLflow run
in the experiment ``evaluation``. Both print a per-class table, write ``summary.json`` and ``summary.csv``
(see :mod:`medcl.evaluation.summary`) and exit 1 when any case had a problem, after writing everything.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

from medcl.commands.flags import add_compute_flags, add_runs_flag
from medcl.errors import ConfigError, DataError

_FOLDER_FLAGS = ("pred", "gt", "labels")
_MODEL_FLAGS = ("model", "data", "splits", "subset", "device", "tracking_uri", "runs")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to the top-level parser.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.
    """
    p = subparsers.add_parser(
        "evaluate",
        help="Dice, HD95 and ASD per case and class, from prediction folders or a trained model",
        description="Score segmentations on whole 3D volumes. Folder mode: --pred DIR --gt DIR [--labels "
        "dataset.json] pairs files by case id. Model mode: --model MODEL --data DATASET --splits splits.json "
        "--subset test|val predicts the cases and logs the scores to a new MLflow run (experiment "
        "'evaluation'). Folder mode scores the predicted cases, as nnU-Net's evaluate_folder: references "
        "without a prediction are named in a warning. Cases that cannot be scored (a prediction without "
        "reference, shape or geometry mismatch, unknown label values, unreadable file) are listed in the "
        "summary and make the exit status 1.",
    )
    folders = p.add_argument_group("folder mode")
    folders.add_argument("--pred", metavar="DIR", help="folder of predicted label maps (CASE.nii.gz, ...)")
    folders.add_argument(
        "--gt", metavar="DIR", help="folder of reference label maps with the same file names"
    )
    folders.add_argument(
        "--labels",
        metavar="JSON",
        help="dataset.json (or its folder) naming the classes; without it the classes are the values found "
        "in the --gt files, named by number, and a class absent from every reference is not scored",
    )
    model = p.add_argument_group("model mode")
    model.add_argument(
        "--model",
        metavar="MODEL",
        help="checkpoint file, MLflow run id, runs:/RUN/PATH or models:/NAME@ALIAS to evaluate",
    )
    model.add_argument(
        "--data", metavar="DIR", help="dataset folder (MSD or nnU-Net layout) holding the cases"
    )
    model.add_argument(
        "--splits", metavar="JSON", help="splits.json from `medcl data split` naming the cases"
    )
    model.add_argument(
        "--subset",
        choices=["test", "val"],
        help="which cases of the splits to evaluate; report 'test' once the model is chosen on 'val'",
    )
    add_runs_flag(
        model,
        "runs folder whose MLflow store gets the evaluation run (default: the store the model came from, "
        "else medcl_runs); the summary goes to DIR/evaluations/<subset>-<timestamp>/ unless -o is given",
    )
    model.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow tracking URI (default: sqlite under --runs)"
    )
    add_compute_flags(model, batch_size=False)
    p.add_argument(
        "--spacing",
        choices=["mm", "voxel"],
        default="mm",
        help="unit of HD95 and ASD: mm from each reference file's spacing (default), or voxels (what SSL4MIS "
        "reports; only comparable across datasets with the same spacing)",
    )
    p.add_argument(
        "--empty-policy",
        choices=["strict", "ssl4mis"],
        default="strict",
        help="scores when a class is empty in the reference or prediction. strict (default): both empty -> "
        "Dice 1, HD95 0; one empty -> Dice 0, HD95/ASD undefined and counted. ssl4mis: reproduces SSL4MIS "
        "(pred only -> Dice 1, HD95 0; otherwise Dice 0, HD95 0); only to compare with published SSL4MIS "
        "numbers, it rewards false positives and scores a miss as HD95 0",
    )
    p.add_argument(
        "-o",
        "--summary",
        metavar="JSON",
        help="summary file; the CSV goes beside it with the same name (default: folder mode prints only, model "
        "mode writes under --runs)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing summary JSON/CSV")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs of batch jobs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``medcl evaluate`` in folder or model mode.

    Args:
        args: Parsed arguments.

    Returns:
        1 if any case had a problem, else 0.

    Raises:
        MedclError: The flags mix or miss a mode's options, an input cannot be used, the summary exists
            without ``--overwrite``, or the model cannot be loaded.
    """
    folder_mode = any(getattr(args, flag) is not None for flag in _FOLDER_FLAGS)
    model_mode = args.model is not None
    if folder_mode and model_mode:
        raise ConfigError("--model cannot be combined with --pred/--gt/--labels; evaluate one way at a time.")
    if model_mode:
        return _run_model(args)
    if not folder_mode:
        raise ConfigError(
            "Give --pred DIR --gt DIR (folder mode) or --model MODEL --data DIR --splits JSON --subset."
        )
    return _run_folders(args)


def _run_folders(args: argparse.Namespace) -> int:
    from medcl.data.dataset import dataset_roots_of, refuse_writing_inside
    from medcl.evaluation.summary import check_output, evaluate_folders, infer_labels, load_labels

    _require(args, ("pred", "gt"), "folder mode")
    given = [
        f"--{flag.replace('_', '-')}" for flag in _MODEL_FLAGS if getattr(args, flag) not in (None, "auto")
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)} belong to --model mode; folder mode takes --pred, --gt, --labels."
        )
    if args.summary:
        # The ground truth is read-only: its folder, and the dataset it belongs to.
        for read_only in {Path(args.gt)} | dataset_roots_of([Path(args.gt) / "any"]):
            refuse_writing_inside(read_only, args.summary, "-o")
        check_output(args.summary, overwrite=args.overwrite)
    labels = load_labels(args.labels) if args.labels else infer_labels(args.gt)
    summary = evaluate_folders(
        args.pred, args.gt, labels, args.spacing, args.empty_policy, progress=not args.no_progress
    )
    _report(summary)
    if args.summary:
        json_path, csv_path = summary.write(args.summary, overwrite=args.overwrite)
        print(f"summary written to {json_path} and {csv_path}")
    else:
        print("summary not written (pass -o FILE.json to keep per-case results)")
    return 1 if summary.problems else 0


def _run_model(args: argparse.Namespace) -> int:
    from medcl.data.dataset import load_dataset, refuse_writing_inside
    from medcl.data.splits import Splits
    from medcl.evaluation.summary import check_output, evaluate_predictor

    _require(args, ("data", "splits", "subset"), "--model mode")
    info = load_dataset(args.data)
    splits = Splits.load(args.splits)
    splits.check_against(info)
    ids = getattr(splits, args.subset)
    if not ids:
        raise DataError(f"Splits file {splits.path} has no {args.subset!r} cases; choose the other --subset.")
    if args.runs is not None:
        refuse_writing_inside(info.root, Path(args.runs).expanduser(), "--runs")
    if args.summary:
        refuse_writing_inside(info.root, args.summary, "-o")

    from medcl.inference.predictor import Predictor
    from medcl.tracking.stores import find_checkpoint

    checkpoint, model_store = find_checkpoint(args.model, args.tracking_uri, args.runs)
    from medcl.tracking.lineage import model_lineage

    lineage = model_lineage(args.model, checkpoint, model_store)  # the training run and logged model
    store, output = _evaluation_store(args, model_store)
    if args.summary:
        summary_path = Path(args.summary)
    else:
        refuse_writing_inside(info.root, output, "--runs")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        summary_path = output / "evaluations" / f"{args.subset}-{stamp}" / "summary.json"
    check_output(summary_path, overwrite=args.overwrite)
    predictor = Predictor.load(
        str(checkpoint),
        device=args.device,
        precision=args.precision,
        tracking_uri=args.tracking_uri,
        output=str(args.runs or output),
    )
    names = list(predictor.class_names)
    if len(names) != info.num_classes:
        raise DataError(
            f"Model {args.model} predicts {len(names)} classes ({', '.join(names)}) but dataset {info.root} has "
            f"{info.num_classes} ({', '.join(info.class_names)}); evaluate it on the dataset it was trained for."
        )
    if names != info.class_names:
        print(
            f"note: the model's class names {names} differ from the dataset's {info.class_names}; "
            "classes are matched by value and named as in the dataset"
        )
    cases = [info.case(case_id) for case_id in ids]
    summary = evaluate_predictor(
        predictor,
        cases,
        info.labels,
        args.spacing,
        args.empty_policy,
        progress=not args.no_progress,
    )
    summary.settings.update(
        {"model": args.model, "dataset": str(info.root), "splits": str(splits.path), "subset": args.subset}
    )
    _report(summary)
    json_path, csv_path = summary.write(summary_path, overwrite=args.overwrite)
    print(f"summary written to {json_path} and {csv_path}")
    if store is None:
        print("not logged to MLflow: no store holds the model; pass --runs DIR or --tracking-uri to log it")
    else:
        linked = dict(lineage) if store[0] == model_store else {}  # ids only mean something in their store
        if lineage and not linked:
            linked = {f"{k}_elsewhere": v for k, v in lineage.items()}
        run_id = _log_mlflow(args, store, summary, json_path, csv_path, linked, (info, cases))
        print(f"MLflow run {run_id} (experiment 'evaluation') in {store[0]}")
    return 1 if summary.problems else 0


def _evaluation_store(
    args: argparse.Namespace, model_store: str | None
) -> tuple[tuple[str, str | None] | None, Path]:
    """The store that gets the evaluation run (None: log nowhere) and the runs folder for the summary.

    A store the user named (``--tracking-uri``, ``MLFLOW_TRACKING_URI``, ``--runs``) may be created; otherwise
    the run goes to the store the model came from, or to an existing ``./medcl_runs`` store, never to a new
    one: an evaluation from another folder must not leave a stray store behind.
    """
    import os

    from medcl.commands.flags import RUNS_DEFAULT
    from medcl.tracking.mlflow_tracking import resolve_store

    named = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or args.runs
    runs = Path(args.runs or RUNS_DEFAULT).expanduser()
    if named:
        uri, root = resolve_store(args.tracking_uri, runs)
    elif model_store:
        uri, root = model_store, None
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///"))
            runs, root = db.parent, str(db.parent / "mlartifacts")
    elif (runs / "mlflow.db").is_file():
        uri, root = resolve_store(None, runs, create=False)
    else:
        return None, runs
    if uri.startswith("sqlite:///"):
        runs = Path(uri.removeprefix("sqlite:///")).parent
    return (uri, root), runs


def _log_mlflow(
    args: argparse.Namespace,
    store: tuple[str, str | None],
    summary: Any,
    json_path: Path,
    csv_path: Path,
    lineage: dict[str, str] | None = None,
    data: tuple[Any, list[Any]] | None = None,
) -> str:
    """A new run in experiment ``evaluation``: tags, settings as params, ``<subset>/...`` metrics, the files.

    Lineage (MLflow 3): ``lineage`` names the training run and logged model that were scored, when they are in
    this store (``run_id``, ``model_id``; ``*_elsewhere`` when they are in another store). The run is tagged
    with both (``medcl.source_run_id``, ``medcl.source_model_id``), takes the logged model as an input
    (``mlflow.log_input(model=...)``) and logs its metrics with ``model_id``, so they appear on the model's
    page beside the training run's; the scored cases (``data``: dataset and cases) are a dataset input
    (context ``testing`` or ``validation``) whose digest the metrics also carry.
    """
    from medcl.tracking.lineage import case_files, code_tags
    from medcl.tracking.mlflow_tracking import MlflowTracker

    lineage = lineage or {}
    uri, artifact_root = store
    tracker = MlflowTracker(uri, artifact_root, "evaluation")
    prefix = args.subset
    source_tags = {f"medcl.source_{key}": value for key, value in lineage.items()}
    run_id = tracker.start(
        run_name=f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={
            "medcl.model": args.model,
            "medcl.subset": prefix,
            "medcl.problems": str(len(summary.problems)),
            **source_tags,
            **code_tags(),
        },
    )
    try:
        dataset = None
        if data is not None:
            info, cases = data
            # The val cases digest as the training run's validation input did.
            context = {"test": "testing", "val": "validation"}.get(prefix, prefix)
            inputs = [(context, case_files(cases), len(cases))]
            dataset = tracker.log_datasets(info.name, info.root, inputs).get(inputs[0][0])
        model_id = lineage.get("model_id")
        if model_id:
            tracker.log_model_input(model_id)
        tracker.log_params(
            {
                "model": args.model,
                "data": summary.settings["dataset"],
                "splits": summary.settings["splits"],
                "spacing": summary.spacing,
                "empty_policy": summary.empty_policy,
                "n_cases": len(summary.cases),
                "n_problems": len(summary.problems),
            }
        )
        means = summary.class_means()
        metrics: dict[str, float] = {}
        for name, stats in means.items():
            key = _metric_name(name)
            for metric in ("dice", "hd95", "asd"):
                if stats[metric] is not None:
                    metrics[f"{prefix}/{metric}/{key}"] = stats[metric]
        fg = summary.foreground_mean(means)
        for metric in ("dice", "hd95", "asd"):
            if fg[metric] is not None:
                metrics[f"{prefix}/{metric}_mean"] = fg[metric]
        tracker.log_metrics(metrics, step=0, model_id=model_id, dataset=dataset)
        tracker.log_artifact(json_path)
        tracker.log_artifact(csv_path)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    return run_id


def _report(summary: Any) -> None:
    print(summary.format_table())
    if summary.not_predicted:
        print(summary.format_not_predicted())
    problems = summary.format_problems()
    if problems:
        print()
        print(problems)


def _require(args: argparse.Namespace, flags: tuple[str, ...], mode: str) -> None:
    missing = [f"--{flag.replace('_', '-')}" for flag in flags if getattr(args, flag) is None]
    if missing:
        raise ConfigError(f"{mode} needs {', '.join(missing)}.")


def _metric_name(name: str) -> str:
    """A class name as MLflow accepts it in a metric key (letters, digits, ``_-. /``)."""
    return re.sub(r"[^\w\-. ]", "_", name)
