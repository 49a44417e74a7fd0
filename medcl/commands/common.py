"""Flags shared by every training command (pretrain, train, finetune) and the config they build."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from medcl.commands.flags import add_runs_flag
from medcl.defaults import DEFAULT_RUNS

if TYPE_CHECKING:  # pydantic is imported when a config is read, not for `medcl --help`
    from medcl.config import Config
    from medcl.config_files import Override

SPLITS_HELP = "splits.json from `medcl data split` -> data.splits (default: seeded 80/20)"


def add_training_flags(
    p: argparse.ArgumentParser,
    example: str = "configs/hippocampus/supervised.yaml",
    splits_help: str = SPLITS_HELP,
) -> None:
    """The common knobs; each one is a shortcut for a config key (``--set`` reaches any other).

    Args:
        p: The subcommand's parser.
        example: A config the command accepts, shown in the help of CONFIG.
        splits_help: What ``--splits`` does for this command (pretraining reads other subsets than training).
    """
    p.add_argument(
        "config", help=f"YAML config (a file, or a shipped name from `medcl config list`), e.g. {example}"
    )
    p.add_argument("--data", metavar="DIR", help="dataset folder (MSD/nnU-Net layout) -> data.path")
    p.add_argument(
        "--splits",
        metavar="JSON",
        help=splits_help,
    )
    p.add_argument(
        "--unlabeled",
        action="append",
        metavar="DIR",
        help="extra folder of unlabeled images beside --data (searched recursively, DICOM series folders "
        "included; repeatable) for the methods that train on unlabeled images (mcsc, actionpp, pretraining) "
        "-> data.unlabeled_dir",
    )
    p.add_argument(
        "--modality",
        choices=["ct", "mri", "auto"],
        help="intensity normalisation -> data.modality: ct clips to the HU window data.ct_window and scales "
        "to [0, 1], mri z-scores each volume; auto (default) reads dataset.json. Needed with --images; "
        "fine-tuning must use the modality its --init run used",
    )
    p.add_argument(
        "--init",
        metavar="CKPT|RUN",
        help="initialise weights from a checkpoint, a run folder, a run id or a runs:/ URI of any run, "
        "pretraining (its last.pt) or segmenting (its best.pt)",
    )
    p.add_argument(
        "--labeled",
        type=int,
        metavar="N",
        help="keep the first N labeled groups of the splits (grouped by data.group_by, e.g. ACDC patients); "
        "the other labeled cases become unlabeled -> data.labeled",
    )
    p.add_argument(
        "--steps", type=int, help="total optimiser steps -> train.steps (raise for better accuracy)"
    )
    p.add_argument("--seed", type=int, help="random seed -> train.seed (repeat runs with 2-3 seeds)")
    add_runs_flag(
        p,
        "runs folder: run folders, checkpoints and the MLflow store DIR/mlflow.db -> output "
        f"(default {DEFAULT_RUNS}; --output is its old spelling)",
    )
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: sqlite under --runs)")
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="-> train.device (auto: CUDA if present)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="RUN",
        help="continue a killed run from its last.pt (a run folder, a checkpoint, or nothing for the newest run); "
        "it continues to the stored train.steps, it does not extend a finished run",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs of batch jobs)")


def config_from_args(args: argparse.Namespace) -> Config:
    """Config file + flags + ``--set`` overrides, validated before any work."""
    overrides: list[Override] = list(args.overrides)  # --set text first, then the typed flags
    from medcl.services.training_options import TRAINING_OPTIONS, training_overrides

    flags = training_overrides(**{name: getattr(args, name, None) for name in TRAINING_OPTIONS})
    overrides.extend(flags.items())  # typed: never re-read as YAML
    if getattr(args, "images", None):
        overrides.append(("data.images", list(args.images)))
    if getattr(args, "unlabeled", None):
        dirs = args.unlabeled
        overrides.append(("data.unlabeled_dir", dirs[0] if len(dirs) == 1 else list(dirs)))
    from medcl.services.configs import load_config
    from medcl.shipped import find_file

    return load_config(find_file("configs", args.config), overrides)  # a file, else a shipped config


def add_images_flag(p: argparse.ArgumentParser) -> None:
    """``--images DIR``: train on folders of unlabeled images instead of a dataset (label-free pretraining)."""
    p.add_argument(
        "--images",
        action="append",
        metavar="DIR",
        help="folder of unlabeled images instead of --data: no dataset.json, no labels; searched recursively "
        "for NIfTI/NRRD/MetaImage files and DICOM series folders (repeatable). Needs --modality ct|mri "
        "-> data.images",
    )
