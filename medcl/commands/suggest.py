"""``medcl suggest``: which unlabeled cases to label next, ranked by a trained model (see :mod:`medcl.suggest`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medcl.commands.flags import add_compute_flags
from medcl.defaults import DEFAULT_RUNS
from medcl.errors import MedclError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``suggest`` to the top-level parser."""
    from medcl.suggest.strategies import STRATEGIES  # torch-free: --help must not load torch

    p = subparsers.add_parser(
        "suggest",
        help="rank the unlabeled cases: which ones to label next",
        description="Score every unlabeled case of --splits (or every image of a folder) with a trained model "
        "and rank them; the first --budget are the suggestion. Writes a CSV (rank, case, score, suggested, "
        "strategy, model_run, cases), a montage PNG of the top cases with their uncertainty overlaid, an MLflow "
        "run nested under the model's training run and, with --update-splits, a splits file with the suggested "
        "cases moved to 'labeled' for the annotator.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint file, run folder, MLflow run id, runs:/<id>/<path> or models:/<name>@<alias>",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="dataset folder (with --splits), or a folder / .txt list of images to rank",
    )
    p.add_argument(
        "--splits",
        metavar="JSON",
        help="splits file; its 'unlabeled' cases are the pool (default: the dataset's unlabeled images)",
    )
    p.add_argument(
        "--labeled",
        type=int,
        metavar="N",
        help="as for train: keep the first N labeled groups of --splits, the rest joins the pool; give the "
        "value the model was trained with",
    )
    p.add_argument("--budget", type=int, required=True, metavar="N", help="groups (or cases) to suggest")
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="entropy",
        help="entropy (default, any model): softmax entropy around the predicted structures; disagreement: "
        "1 - Dice between MCSC's two networks or a student and its EMA teacher (free for those methods); tta: "
        "variance over flips and rotations (6-10x the time); diverse: entropy weighted by distance to the "
        "labeled and already picked cases (use it when the pool holds near-duplicates); random: the baseline",
    )
    p.add_argument(
        "--group-by",
        metavar="REGEX",
        help="rank groups of cases, e.g. 'patient\\d+' (default: the model's data.group_by, else the splits')",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --strategy random (default 0)")
    p.add_argument(
        "--border",
        type=int,
        default=3,
        metavar="VOXELS",
        help="entropy and tta average over the predicted foreground grown by this many voxels (default 3); "
        "raise it when the model misses whole structures",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="the ranking (default RUNS/suggestions/<strategy>-<time>/suggestions.csv); montage.png goes beside it",
    )
    p.add_argument(
        "--update-splits",
        metavar="JSON",
        help="write a new splits file with the suggested cases moved from unlabeled to labeled",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing CSV, montage and splits files")
    add_compute_flags(p)
    p.add_argument(
        "--runs",
        metavar="DIR",
        help="runs folder: searched first for run ids and models:/ URIs; its store gets the suggestion run "
        f"(default: the store the model came from, else an existing {DEFAULT_RUNS}; none: nothing is logged)",
    )
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow store (default: sqlite under --runs)")
    p.add_argument("--no-tracking", action="store_true", help="log nothing to MLflow")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _check_free(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise MedclError(f"{path} exists; pass --overwrite to replace it")


def run(args: argparse.Namespace) -> int:
    """Run ``medcl suggest``; 0 on success."""
    import numpy as np

    from medcl.data.dataset import refuse_writing_inside
    from medcl.errors import ConfigError
    from medcl.inference.predictor import Predictor
    from medcl.suggest import (
        check_strategy,
        load_pool,
        log_to_mlflow,
        model_run_of,
        montage,
        suggest,
        updated_splits,
        write_csv,
    )
    from medcl.tracking.stores import find_checkpoint, results_store

    if args.budget < 1:
        raise ConfigError(f"--budget must be at least 1; got {args.budget}")
    if args.update_splits and not args.splits:
        raise ConfigError(
            "--update-splits needs --splits: the new file is the old one with the suggestion moved"
        )
    if args.labeled is not None and not args.splits:
        raise ConfigError("--labeled needs --splits")
    if args.update_splits and Path(args.update_splits).resolve() == Path(args.splits).resolve():
        raise MedclError("--update-splits must name a new file, not the --splits file it starts from")
    checkpoint, model_store = find_checkpoint(args.model, args.tracking_uri, args.runs)
    store, runs = results_store(args.tracking_uri, args.runs, model_store)  # as for evaluate
    if args.output:
        csv_path = Path(args.output)
        png_path = csv_path.with_name(csv_path.stem + "_montage.png")
    else:
        csv_path = (
            runs / "suggestions" / f"{args.strategy}-{time.strftime('%Y%m%d-%H%M%S')}" / "suggestions.csv"
        )
        png_path = csv_path.with_name("montage.png")
    outputs = [csv_path, png_path] + ([Path(args.update_splits)] if args.update_splits else [])
    data_root = Path(args.data).expanduser()
    for out in outputs:  # checked before the model loads: a refusal costs nothing
        if data_root.is_dir():
            refuse_writing_inside(data_root, out, "an output")
        _check_free(out, args.overwrite)

    predictor = Predictor.load(str(checkpoint), device=args.device, precision=args.precision)
    predictor.source = args.model
    if args.batch_size:
        predictor.sw_batch_size = args.batch_size
    check_strategy(args.strategy, predictor.method, args.model)  # before reading any case
    group_by = args.group_by or predictor.cfg.data.group_by
    pool, labeled, splits = load_pool(args.data, args.splits, labeled_groups=args.labeled, group_by=group_by)
    if group_by is None and splits is not None:
        group_by = splits.meta.get("group_by") or splits.meta.get("labeled_group_by")
    print(
        f"scoring {len(pool)} unlabeled case(s) with --strategy {args.strategy}"
        + (f", grouped by {group_by!r}" if group_by else "")
    )
    result = suggest(
        predictor,
        pool,
        args.strategy,
        args.budget,
        group_by=group_by,
        labeled=labeled if args.strategy == "diverse" else (),
        seed=args.seed,
        border=args.border,
        progress=not args.no_progress,
    )
    result.model_run = model_run_of(args.model, result.model_run)
    write_csv(result, csv_path)
    files = [csv_path]
    picture = montage(result)
    if picture is not None:
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(picture)).save(png_path)
        files.append(png_path)
    if args.update_splits:
        updated_splits(splits, result).save(args.update_splits)
        files.append(Path(args.update_splits))

    width = max(len(r.case) for r in result.suggested)
    print(f"{'rank':>4} {'case':<{width}} {'score':>9}  cases")
    for r in result.suggested:
        score = "" if r.score is None else f"{r.score:.4f}"
        print(f"{r.rank:>4} {r.case:<{width}} {score:>9}  {', '.join(r.cases)}")
    print(f"{result.seconds_per_case:.2f} s per case; ranking of {len(result.rows)} written to {csv_path}")
    if picture is not None:
        print(f"montage: {png_path}")
    if args.update_splits:
        print(
            f"new splits: {args.update_splits} ({len(result.suggested_cases)} case(s) moved to 'labeled'); label "
            "them, then train with the new file"
        )
    if args.no_tracking:
        return 0
    if store is None:
        print("not logged to MLflow: no store holds the model; pass --runs DIR or --tracking-uri to log it")
        return 0
    run_id, parent = log_to_mlflow(
        result, files, store=store, extra_params={"data": str(args.data), "splits": str(args.splits or "")}
    )
    where = f" under the model's run {parent}" if parent else ""
    print(f"MLflow run {run_id}{where} in {store[0]}")
    return 0
