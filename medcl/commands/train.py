"""``medcl train``: train a method (supervised baseline or a semi-supervised method) with MLflow tracking."""

from __future__ import annotations

import argparse
import math
import os

from medcl.commands.common import add_images_flag, add_training_flags, config_from_args
from medcl.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a segmentation model (method from the config)",
        description="Train the method named in the config on labeled (+ unlabeled) cases, validating on whole "
        "3D volumes and tracking everything in MLflow.",
    )
    add_training_flags(p)
    add_images_flag(p)
    p.set_defaults(func=run, expect=None)

    p = subparsers.add_parser(
        "pretrain",
        help="contrastive pretraining on unlabeled images (global, then local stage)",
        description="Pretrain on unlabeled images, labels never read: a plain folder of scans (--images DIR "
        "--modality ct|mri; no dataset.json) or every training image of a dataset (--data DIR, plus "
        "--unlabeled DIR). The global stage (encoder + g1, configs/<dataset>/pretrain_global.yaml) then the "
        "local stage (frozen encoder, decoder blocks + g2, pretrain_local.yaml, --init <global run>); then "
        "`medcl finetune --init <run>`. Chaitanya et al., NeurIPS 2020.",
    )
    add_training_flags(
        p,
        example="configs/hippocampus/pretrain_global.yaml",
        splits_help="splits.json -> data.splits: pretrain on its labeled + unlabeled cases only, never val/test "
        "(default: every training image of the dataset, labeled or not)",
    )
    add_images_flag(p)
    p.add_argument(
        "--strategy",
        help="global: GR, GD- or GD (default GD); local: LR or LD (default LR) -> method.strategy",
    )
    p.add_argument(
        "--partitions", type=int, metavar="S", help="partitions per volume (paper: 4) -> method.partitions"
    )
    p.set_defaults(func=run, expect="pretrain")

    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained model on the few labeled cases (supervised)",
        description="Supervised training on the labeled cases of --splits (or the first --labeled N groups), "
        "initialised with --init from a pretraining run or checkpoint; the projection heads are dropped.",
    )
    add_training_flags(p, example="configs/hippocampus/finetune.yaml")
    p.set_defaults(func=run, expect="finetune")


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
    from medcl.methods import METHODS

    extra = []
    if getattr(args, "strategy", None):
        extra.append(f"method.strategy={args.strategy}")
    if getattr(args, "partitions", None):
        extra.append(f"method.partitions={args.partitions}")
    args.overrides = [*extra, *args.overrides]
    cfg = config_from_args(args)
    if args.expect == "pretrain" and METHODS[cfg.method_name].kind != "pretrain":
        raise ConfigError(
            "medcl pretrain needs a pretraining config (method.name one of "
            f"{', '.join(n for n, m in METHODS.items() if m.kind == 'pretrain')}), got {cfg.method_name!r}"
        )
    if args.expect == "finetune":
        if cfg.method_name != "supervised":
            raise ConfigError(
                f"medcl finetune trains the supervised method, got method.name {cfg.method_name!r}"
            )
        if not cfg.init and not args.resume:
            print("note: no --init given: fine-tuning from random initialisation (the baseline)")
    tags = {"medcl.stage": args.expect or "train"}
    result = train(cfg, resume=args.resume, progress=not args.no_progress, tags=tags)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(format_result(result))
        if result.best_dice is None and METHODS[cfg.method_name].kind == "pretrain":
            print(
                f"next:             medcl finetune configs/<dataset>/finetune.yaml --data DIR --labeled N "
                f"--init {result.run_id or result.run_dir}"
            )
    return 0
