"""Label efficiency of contrastive pretraining (Chaitanya et al. 2020) on real data.

For one dataset: pretrain the global stage (G^D) and the local stage (L^R, from the global run) once on every
training-pool image (labels never read), then fine-tune with the same budget and seeds from three
initialisations -- random, G^D, G^D + L -- for each labeled count, and report the best validation mean
foreground Dice on whole 3D volumes (mean and spread over seeds).

Protocols:
* hippocampus: ``../shared/data/Task04_Hippocampus``; 40 val cases drawn with seed 0, the other 168 cases are the
  pretraining pool; labeled = the first N cases of the pool (2, 5, 10 by default).
* acdc: ``../shared/data/ACDC`` with its ``splits.json`` (70 train patients = pool, 10 val patients);
  labeled = the first N patients (both frames) of the train list (1, 2, 8 by default).

Run (CPU-sized defaults; raise the step counts on a GPU):
``.venv/bin/python benchmarks/bench_label_efficiency.py --dataset hippocampus``
``.venv/bin/python benchmarks/bench_label_efficiency.py --dataset acdc --global-steps 600 --finetune-steps 200
--set "data.patch_size=[128,128]" --set "data.spacing=[2.0,2.0,1.0]"`` (whole slices at half resolution)

The report also holds the last logged training metrics of both pretraining stages: a global stage whose
``train/emb_cos_mean`` ends near 1 has collapsed and cannot help fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from medcl.data.dataset import load_dataset
from medcl.data.splits import Splits, make_splits
from medcl.engine.run import train
from medcl.services.configs import load_config

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DATASETS = {
    "hippocampus": {"folder": "Task04_Hippocampus", "labels": [2, 5, 10], "group_by": None},
    "acdc": {"folder": "ACDC", "labels": [1, 2, 8], "group_by": r"patient\d+"},
}


def make_pool_splits(name: str, out: Path, root: Path | None = None) -> Path:
    """The benchmark's splits file: pretraining/labeled pool + validation cases (of ``root``, default shared)."""
    root = root or DATA / DATASETS[name]["folder"]
    if name == "acdc":
        splits = Splits.load(root / "splits.json")
    else:
        info = load_dataset(root)
        drawn = make_splits(info, labeled=len(info.cases) - 40, val=40, seed=0)
        splits = Splits(labeled=sorted(drawn.labeled), val=drawn.val, meta=drawn.meta)
    path = out / "splits.json"
    splits.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="hippocampus")
    parser.add_argument("--labels", type=int, nargs="+", help="labeled counts (default per dataset)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--global-steps", type=int, default=300)
    parser.add_argument("--local-steps", type=int, default=200)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config overrides, all stages"
    )
    parser.add_argument("--output", default="bench_runs/label_efficiency")
    args = parser.parse_args()

    spec = DATASETS[args.dataset]
    labels = args.labels or spec["labels"]
    out = Path(args.output).resolve() / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    splits = make_pool_splits(args.dataset, out)
    data = DATA / spec["folder"]
    common = [f"data.path={data}", f"data.splits={splits}", f"output={out}", *args.overrides]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    configs = REPO / "configs" / args.dataset

    def run(config: str, name: str, extra: list[str]):
        cfg = load_config(configs / config, [*common, f"tracking.run_name={name}-{stamp}", *extra])
        start = time.perf_counter()
        result = train(cfg, progress=False, tags={"medcl.benchmark": "label_efficiency"})
        return result, time.perf_counter() - start

    timings = {}
    g, timings["pretrain_global_s"] = run(
        "pretrain_global.yaml", "global", [f"train.steps={args.global_steps}"]
    )
    loc, timings["pretrain_local_s"] = run(
        "pretrain_local.yaml", "local", [f"train.steps={args.local_steps}", f"init={g.last_checkpoint}"]
    )
    # Collapse check: a global stage whose embeddings all point one way (mean pairwise cosine near 1) has
    # learnt nothing, and fine-tuning from it cannot beat random init.
    import mlflow  # here, not at the top: accuracy.py imports this module on machines without MLflow

    from medcl.tracking.mlflow_tracking import resolve_store

    client = mlflow.MlflowClient(resolve_store(None, out)[0])
    pretraining = {
        stage: {
            k: round(v, 4) for k, v in client.get_run(r.run_id).data.metrics.items() if k.startswith("train/")
        }
        for stage, r in (("global", g), ("local", loc))
    }
    print(f"pretraining, last logged values: {json.dumps(pretraining)}", flush=True)
    inits = {"random": None, "GD": str(g.last_checkpoint), "GD+L": str(loc.last_checkpoint)}
    scores: dict[str, dict[int, list[float]]] = {k: {n: [] for n in labels} for k in inits}
    finetune_s = []
    for n in labels:
        for seed in args.seeds:
            for init_name, init in inits.items():
                extra = [
                    f"train.steps={args.finetune_steps}",
                    f"train.seed={seed}",
                    f"data.labeled={n}",
                    "tracking.log_model=false",
                ]
                if spec["group_by"]:
                    extra.append(f"data.group_by={spec['group_by']}")
                if init:
                    extra.append(f"init={init}")
                result, seconds = run("finetune.yaml", f"ft-{init_name}-n{n}-s{seed}", extra)
                finetune_s.append(seconds)
                scores[init_name][n].append(result.best_dice)
                print(
                    f"{init_name:>7} n={n:<3} seed={seed}: val Dice {result.best_dice:.4f} ({seconds:.0f} s)",
                    flush=True,
                )

    table = {}
    for init_name, per_n in scores.items():
        table[init_name] = {
            str(n): {
                "mean": round(statistics.mean(v), 4),
                "sd": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0,
                "runs": [round(x, 4) for x in v],
            }
            for n, v in per_n.items()
        }
    report = {
        "protocol": f"{args.dataset}: {DATASETS[args.dataset]['folder']}, splits {splits}, labeled = first N "
        f"{'patients' if spec['group_by'] else 'cases'} of the pool, global G^D {args.global_steps} steps, local "
        f"L^R {args.local_steps} steps (pretrained once, seed 0), fine-tune {args.finetune_steps} steps, seeds "
        f"{args.seeds}, metric: best validation mean foreground Dice on whole 3D volumes, overrides {args.overrides}",
        "dice": table,
        "pretraining_last_metrics": pretraining,
        "seconds": {
            **{k: round(v) for k, v in timings.items()},
            "finetune_median_s": round(statistics.median(finetune_s)),
        },
    }
    print(json.dumps(report, indent=1))
    (out / f"report-{stamp}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
