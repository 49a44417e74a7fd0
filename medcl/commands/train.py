"""``medcl train``: train a method (supervised baseline or a semi-supervised method) with MLflow tracking."""

from __future__ import annotations

import argparse
import math
import os

from medcl.commands.common import add_training_flags, config_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a segmentation model (method from the config)",
        description="Train the method named in the config on labeled (+ unlabeled) cases, validating on whole "
        "3D volumes and tracking everything in MLflow.",
    )
    add_training_flags(p)
    p.set_defaults(func=run)


def format_result(result) -> str:
    lines = [f"run id:           {result.run_id}", f"run folder:       {result.run_dir}"]
    lines.append(f"steps:            {result.steps} in {result.seconds / 60:.1f} min")
    if result.best_dice is not None:
        lines.append(f"best val Dice:    {result.best_dice:.4f} (step {result.best_step})")
        lines.append(f"best checkpoint:  {result.best_checkpoint}")
        lines.append("")
        lines.append(f"{'class':<20} {'Dice':>8} {'HD95 (mm)':>10}")
        for name, m in result.best_per_class.items():
            hd = m.get("hd95", float("nan"))
            lines.append(f"{name:<20} {m['dice']:>8.4f} {hd if math.isfinite(hd) else float('nan'):>10.2f}")
    else:
        lines.append(f"last checkpoint:  {result.last_checkpoint} (no validation cases)")
    if result.model_uri:
        lines.append(f"MLflow model:     {result.model_uri}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from medcl.engine.run import train

    cfg = config_from_args(args)
    result = train(cfg, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(format_result(result))
    return 0
