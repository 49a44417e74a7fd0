"""Flags shared by every training command (pretrain, train, finetune) and the config they build."""

from __future__ import annotations

import argparse

from medcl.config import Config, load_config


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """The common knobs; each one is a shortcut for a config key (``--set`` reaches any other)."""
    p.add_argument("config", help="YAML config, e.g. configs/hippocampus/supervised.yaml")
    p.add_argument("--data", metavar="DIR", help="dataset folder (MSD/nnU-Net layout) -> data.path")
    p.add_argument(
        "--splits",
        metavar="JSON",
        help="splits.json from `medcl data split` -> data.splits (default: seeded 80/20)",
    )
    p.add_argument(
        "--init", metavar="CKPT|RUN", help="initialise weights from a checkpoint, run id or runs:/ URI"
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
    p.add_argument(
        "--output", metavar="DIR", help="folder for runs, checkpoints and the MLflow store -> output"
    )
    p.add_argument(
        "--tracking-uri", metavar="URI", help="MLflow tracking URI (default: sqlite under --output)"
    )
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
    overrides = list(args.overrides)
    for flag, key in (
        ("data", "data.path"),
        ("splits", "data.splits"),
        ("init", "init"),
        ("labeled", "data.labeled"),
        ("steps", "train.steps"),
        ("seed", "train.seed"),
        ("output", "output"),
        ("tracking_uri", "tracking.uri"),
        ("device", "train.device"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(args.config, overrides)
