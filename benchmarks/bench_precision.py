"""Accuracy parity of bf16 and fp32: the same recipe trained at each precision and seed, val Dice compared.

Each (precision, seed) cell is one ``medcl.engine.run.train`` run of ``--config`` on ``--data`` with
``--splits`` (validation on whole 3D volumes every ``val.every`` steps, as the config says) and
``--set`` overrides; the table gives the final and the best validation mean foreground Dice per cell, the
mean over seeds, and the training time (seconds per step, validation excluded). Runs go one after the other
(never side by side) into one MLflow store under ``--output``.

Recipes used in docs/benchmarks.md:

* Hippocampus supervised (README recipe): ``--config configs/hippocampus/supervised.yaml
  --data ../shared/data/Task04_Hippocampus --splits <80/20 split, seed 0> --steps 2000``
* ACDC cross teaching (README's 120-step ACDC protocol, N = 3 patients): ``--config configs/acdc/mcsc.yaml``
  with the README's overrides and ``--set method.contrast_weight=0``.

Run: ``.venv/bin/python benchmarks/bench_precision.py --config CFG --data DIR --splits FILE [--steps N]
[--seeds 0 1] [--precisions fp32 bf16] [--set KEY=VALUE ...] [--labeled N] [--group-by REGEX]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from medcl.engine.run import train
from medcl.services.configs import load_config


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--splits", required=True)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--labeled", type=int, default=None, help="first N labeled groups of the splits")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", default="bench_runs/precision")
    args = parser.parse_args()

    rows = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for seed in args.seeds:
        for precision in args.precisions:
            overrides = [
                f"data.path={args.data}",
                f"data.splits={args.splits}",
                f"train.seed={seed}",
                f"train.precision={precision}",
                f"output={args.output}",
                f"tracking.run_name={Path(args.config).stem}-{precision}-s{seed}-{stamp}",
                "tracking.log_model=false",
                *([f"train.steps={args.steps}"] if args.steps else []),
                *([f"data.labeled={args.labeled}"] if args.labeled else []),
                *args.set,
            ]
            cfg = load_config(args.config, overrides)
            result = train(cfg, progress=False)
            final = result.final_dice  # validation at the last step; best_dice is what best.pt holds
            row = {
                "precision": precision,
                "seed": seed,
                "best_dice": round(result.best_dice, 4),
                "best_step": result.best_step,
                "final_dice": round(final, 4) if final is not None else None,
                "s_per_step": round((result.seconds - result.validation_seconds) / max(result.steps, 1), 4),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("best (final) val Dice per seed")
    print(
        "| precision | "
        + " | ".join(f"seed {s}" for s in args.seeds)
        + " | mean best | mean final | s/step |"
    )
    print("| --- | " + " | ".join("---" for _ in args.seeds) + " | --- | --- | --- |")
    for precision in args.precisions:
        cells = [r for r in rows if r["precision"] == precision]
        dice = [r["best_dice"] for r in cells]
        speed = statistics.median(r["s_per_step"] for r in cells)
        print(
            f"| {precision} | "
            + " | ".join(f"{r['best_dice']:.4f} ({r['final_dice']})" for r in cells)
            + f" | {statistics.mean(dice):.4f} | {statistics.mean(r['final_dice'] or 0 for r in cells):.4f}"
            + f" | {speed:.4f} |"
        )


if __name__ == "__main__":
    main()
