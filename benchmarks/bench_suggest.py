"""Simulated annotation: does ``medcl suggest`` pick better cases to label than chance?

Protocol (issue 17, on the CPU recipe of the label-efficiency benchmark):

1. Start from the first N labeled groups of the training pool (ACDC: 1 patient, both frames; Hippocampus: 2
   cases) and train the start model.
2. Each strategy ranks the rest of the pool (the "unlabeled" cases, whose labels are hidden) and picks k more
   groups (ACDC: 2 patients -> 3; Hippocampus: 3 cases -> 5); their labels are "revealed" (they are in the
   dataset already) and a new model is trained from scratch on N + k groups with the same seed and steps.
3. Each model is scored on the validation cases (ACDC: the 10 val patients of splits.json; Hippocampus: 40
   cases drawn with seed 0): best validation mean foreground Dice on whole 3D volumes.

Compared: every strategy, ``random`` over ``--draws`` draws (mean and spread), and "the first N + k groups"
of the pool (the papers' protocol). Target: the best strategy above the random mean by more than the random
spread. Also reported: the cost of ``suggest`` per case.

Run (CPU; ten trainings: hours at full size, the CPU recipe's 5000 steps per ACDC model; measured with 1500
steps, 78 min on 2 cores, on ACDC resampled once by ``accuracy.py --prepare .gpudata/acdc2mm``):
``.venv/bin/python benchmarks/bench_suggest.py --dataset acdc --data-root .gpudata/acdc2mm --steps 1500``
``.venv/bin/python benchmarks/bench_suggest.py --dataset hippocampus`` (the CPU recipe, 3000 steps)
``.venv/bin/python benchmarks/bench_suggest.py --smoke`` (seconds: tiny model, 3 steps, a pool of a few cases;
checks the plumbing, the numbers mean nothing)

``disagreement`` needs a method with two networks: ``--config configs/acdc/mcsc.yaml --strategies
disagreement entropy random``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from medcl.data.dataset import load_dataset
from medcl.data.splits import Splits, _group_cases, make_splits
from medcl.engine.run import train
from medcl.inference.predictor import Predictor
from medcl.services.configs import load_config
from medcl.suggest import PoolCase, suggest, updated_splits

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DATASETS = {
    "acdc": {
        "folder": "ACDC",
        "config": "configs/acdc/cpu/supervised.yaml",
        "start": 1,
        "add": 2,
        "group_by": r"patient\d+",
    },
    "hippocampus": {
        "folder": "Task04_Hippocampus",
        "config": "configs/hippocampus/cpu/supervised.yaml",
        "start": 2,
        "add": 3,
        "group_by": None,
    },
}
SMOKE = [
    "model.features=[4, 4, 8, 8, 16, 4]",
    "data.batch_size=2",
    "val.sw_batch_size=8",
    "data.cache=none",
    "tracking.enabled=false",
]


def pool_splits(name: str, root: Path, smoke: bool) -> Splits:
    """Training pool (``labeled``, labels hidden later) and validation cases of the protocol."""
    spec = DATASETS[name]
    if name == "acdc":
        splits = Splits.load(root / "splits.json")
    else:
        info = load_dataset(root)
        drawn = make_splits(info, labeled=len(info.cases) - 40, val=40, seed=0)
        splits = Splits(labeled=sorted(drawn.labeled), val=drawn.val, meta=drawn.meta)
    if smoke:  # a few groups of pool and validation: the plumbing, not the numbers
        keep = list(_group_cases(splits.labeled, spec["group_by"]).values())[
            : spec["start"] + spec["add"] + 3
        ]
        val = list(_group_cases(splits.val, spec["group_by"]).values())[:1]
        splits = Splits(
            labeled=[c for g in keep for c in g], val=[c for g in val for c in g], meta=splits.meta
        )
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="acdc")
    parser.add_argument("--config", help="training config (default: the dataset's CPU supervised recipe)")
    parser.add_argument(
        "--steps",
        type=int,
        help="training steps of every model (default: the config's); validation every tenth of them",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        help=f"folder holding the dataset (default {DATA}; e.g. ACDC resampled once to 2 mm by "
        "`accuracy.py --prepare DIR`, so that training and scoring skip the resampling)",
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        help="strategies besides random (default entropy tta diverse; smoke: entropy)",
    )
    parser.add_argument("--draws", type=int, default=5, help="random draws (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of every model")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides")
    parser.add_argument("--output", default="bench_runs/suggest")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny model, 3 steps, entropy + 2 random draws, a small pool, no MLflow",
    )
    args = parser.parse_args()

    spec = DATASETS[args.dataset]
    steps = args.steps or (3 if args.smoke else None)
    draws = 2 if args.smoke else args.draws
    strategies = args.strategies or (["entropy"] if args.smoke else ["entropy", "tta", "diverse"])
    out = Path(args.output).resolve() / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = (args.data_root or DATA) / spec["folder"]
    info = load_dataset(data)
    pool = pool_splits(args.dataset, data, args.smoke)
    group_by, n0, k = spec["group_by"], spec["start"], spec["add"]
    config = REPO / (args.config or spec["config"])
    base = [f"data.path={data}", f"output={out}", f"train.seed={args.seed}", "tracking.log_model=false"]
    base += [f"train.steps={steps}", f"val.every={max(1, steps // 10)}"] if steps else []
    base += [*(SMOKE if args.smoke else []), *args.overrides]
    if group_by:
        base.append(f"data.group_by={group_by}")

    def fit(splits: Splits, name: str) -> tuple[float, Path]:
        path = out / f"splits-{name}-{stamp}.json"
        splits.save(path)
        cfg = load_config(config, [*base, f"data.splits={path}", f"tracking.run_name={name}-{stamp}"])
        start = time.perf_counter()
        result = train(cfg, progress=False, tags={"medcl.benchmark": "suggest"})
        print(
            f"{name:>16}: val Dice {result.best_dice:.4f} ({time.perf_counter() - start:.0f} s)", flush=True
        )
        return float(result.best_dice), result.best_checkpoint

    start_splits = pool.with_labeled(n0, group_by=group_by)
    start_dice, start_ckpt = fit(start_splits, f"start-{n0}")
    predictor = Predictor.load(str(start_ckpt), device="auto")
    candidates = [PoolCase(i, list(info.case(i).images)) for i in start_splits.unlabeled]
    labeled = [PoolCase(i, list(info.case(i).images)) for i in start_splits.labeled]

    dice: dict[str, float] = {}
    picks: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    for strategy in [*strategies, *(f"random-{d}" for d in range(draws))]:
        name, seed = (
            (strategy.split("-")[0], int(strategy.split("-")[1])) if "-" in strategy else (strategy, 0)
        )
        result = suggest(
            predictor,
            candidates,
            name,
            k,
            group_by=group_by,
            labeled=labeled if name == "diverse" else (),
            seed=seed,
        )
        seconds[strategy] = round(result.seconds_per_case, 3)
        picks[strategy] = [r.case for r in result.suggested]
        print(f"{strategy:>16}: picks {', '.join(picks[strategy])} ({result.seconds_per_case:.2f} s/case)")
        dice[strategy], _ = fit(updated_splits(start_splits, result), f"{strategy}-{n0 + k}")
    dice["first"], _ = fit(pool.with_labeled(n0 + k, group_by=group_by), f"first-{n0 + k}")

    rand = [dice[f"random-{d}"] for d in range(draws)]
    rand_mean = statistics.mean(rand)
    rand_sd = statistics.stdev(rand) if len(rand) > 1 else 0.0
    best = max(strategies, key=lambda s: dice[s]) if strategies else None
    report = {
        "protocol": f"{args.dataset}: start {n0} -> {n0 + k} labeled {'patients' if group_by else 'cases'}, "
        f"config {config.relative_to(REPO) if config.is_relative_to(REPO) else config}, steps "
        f"{steps or 'config'}, seed {args.seed}, {len(pool.val)} val cases, pool {len(pool.labeled)} cases, "
        f"overrides {args.overrides}{' (SMOKE: numbers mean nothing)' if args.smoke else ''}",
        "start_dice": round(start_dice, 4),
        "dice": {s: round(v, 4) for s, v in dice.items()},
        "random": {
            "mean": round(rand_mean, 4),
            "sd": round(rand_sd, 4),
            "draws": [round(x, 4) for x in rand],
        },
        "best_strategy": best,
        "target_met": bool(best and dice[best] - rand_mean > rand_sd),
        "picks": picks,
        "suggest_seconds_per_case": seconds,
        "device": str(predictor.device),
    }
    print(json.dumps(report, indent=1))
    (out / f"report-{stamp}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
