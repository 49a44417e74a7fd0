"""``medcl evaluate``: Dice, HD95 and ASD per case and class, from prediction folders or from a model.

Folder mode scores the label files of ``--pred`` against those of ``--gt``; model mode segments the
``--subset`` cases of a splits file with a trained model, scores them and logs the result to a new MLflow run
in the experiment ``evaluation``. Both print a per-class table, write ``summary.json`` and ``summary.csv``
(see :mod:`medcl.evaluation.summary`) and exit 1 when any case had a problem, after writing everything.
The work is :mod:`medcl.services.evaluate`'s (as for a workflow's ``evaluate`` stage); this module parses the
flags, picks the output paths and prints.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from medcl.commands.flags import add_compute_flags, add_runs_flag
from medcl.defaults import DEFAULT_RUNS
from medcl.errors import ConfigError

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
        f"else {DEFAULT_RUNS}); the summary goes to DIR/evaluations/<subset>-<timestamp>/ unless -o is given",
    )
    model.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow tracking URI (default: sqlite under --runs)"
    )
    add_compute_flags(model, batch_size=False)
    model.add_argument(
        "--uncertainty",
        action="store_true",
        help="also score the model's uncertainty map against its errors: the voxel AUROC of wrong vs right "
        "voxels near the structures, and across cases the Spearman correlation of mean uncertainty with "
        "1 - Dice (what `medcl suggest --strategy entropy` ranks by)",
    )
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
    from medcl.evaluation.report import check_output
    from medcl.services.evaluate import score_folders

    _require(args, ("pred", "gt"), "folder mode")
    given = [
        f"--{flag.replace('_', '-')}" for flag in _MODEL_FLAGS if getattr(args, flag) not in (None, "auto")
    ] + (["--uncertainty"] if args.uncertainty else [])  # a prediction folder has no uncertainty maps
    if given:
        raise ConfigError(
            f"{', '.join(given)} belong to --model mode; folder mode takes --pred, --gt, --labels."
        )
    if args.summary:
        # The ground truth is read-only: its folder, and the dataset it belongs to.
        for read_only in {Path(args.gt)} | dataset_roots_of([Path(args.gt) / "any"]):
            refuse_writing_inside(read_only, args.summary, "-o")
        check_output(args.summary, overwrite=args.overwrite)
    summary = score_folders(
        args.pred,
        args.gt,
        args.labels,
        spacing=args.spacing,
        empty_policy=args.empty_policy,
        progress=not args.no_progress,
    )
    _report(summary)
    if args.summary:
        json_path, csv_path = summary.write(args.summary, overwrite=args.overwrite)
        print(f"summary written to {json_path} and {csv_path}")
    else:
        print("summary not written (pass -o FILE.json to keep per-case results)")
    return 1 if summary.problems else 0


def _run_model(args: argparse.Namespace) -> int:
    from medcl.data.dataset import refuse_writing_inside
    from medcl.evaluation.report import check_output
    from medcl.inference.predictor import Predictor
    from medcl.services.evaluate import check_classes, load_subset, log_evaluation_run, score_model
    from medcl.tracking.lineage import model_lineage
    from medcl.tracking.stores import find_checkpoint, results_store

    _require(args, ("data", "splits", "subset"), "--model mode")
    subset = load_subset(args.data, args.splits, args.subset, option="--subset")
    info = subset.info
    if args.runs is not None:
        refuse_writing_inside(info.root, Path(args.runs).expanduser(), "--runs")
    if args.summary:
        refuse_writing_inside(info.root, args.summary, "-o")

    checkpoint, model_store = find_checkpoint(args.model, args.tracking_uri, args.runs)
    lineage = model_lineage(args.model, checkpoint, model_store)  # the training run and logged model
    store, output = results_store(args.tracking_uri, args.runs, model_store)
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
    if check_classes(predictor, info, args.model):
        print(
            f"note: the model's class names {list(predictor.class_names)} differ from the dataset's "
            f"{info.class_names}; classes are matched by value and named as in the dataset"
        )
    summary = score_model(
        predictor,
        subset,
        model=args.model,
        spacing=args.spacing,
        empty_policy=args.empty_policy,
        progress=not args.no_progress,
        uncertainty=args.uncertainty,
    )
    _report(summary)
    files = summary.write(summary_path, overwrite=args.overwrite)
    print(f"summary written to {files[0]} and {files[1]}")
    if store is None:
        print("not logged to MLflow: no store holds the model; pass --runs DIR or --tracking-uri to log it")
    else:
        linked = dict(lineage) if store[0] == model_store else {}  # ids only mean something in their store
        if lineage and not linked:
            linked = {f"{k}_elsewhere": v for k, v in lineage.items()}
        run_id = log_evaluation_run(store, summary, files, subset=subset, lineage=linked)
        print(f"MLflow run {run_id} (experiment 'evaluation') in {store[0]}")
    return 1 if summary.problems else 0


def _report(summary: Any) -> None:
    print(summary.format_table())
    scores = summary.uncertainty_summary()
    if scores is not None:
        auroc, rho = scores["error_auroc_mean"], scores["case_error_spearman"]
        print(
            f"uncertainty vs errors: voxel AUROC {'n/a' if auroc is None else f'{auroc:.3f}'} (0.5 = chance), "
            f"case Spearman(mean uncertainty, 1 - Dice) {'n/a' if rho is None else f'{rho:+.3f}'} "
            f"over {scores['n_cases']} cases"
        )
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
