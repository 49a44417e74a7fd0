"""The accuracy table users compare methods with: rows = methods, columns = labeled counts, on real data.

Every cell trains one recipe with the same labeled cases, step budget and seeds, then scores the final model
(validation runs once, at the last step: no checkpoint selection) on whole 3D volumes of the evaluation ids:
mean foreground Dice and HD95 (ACDC: voxels, its spacing is unknown; Hippocampus: mm), mean (and spread)
over seeds. The table is printed as markdown and logged to MLflow as one parent run (``accuracy-<dataset>``)
whose children are the training runs of every cell, with ``dice/<row>/n<N>`` metrics and ``accuracy.md``.

Rows (each included only where its method is registered):

* ``supervised``: the supervised baseline on the labeled cases (``configs/<dataset>/supervised.yaml``).
* ``chaitanya``: G^D then L^R pretraining once on every training-pool image (labels never read), then the
  supervised recipe initialised from it (``pretrain_global.yaml``, ``pretrain_local.yaml``, then
  ``supervised.yaml`` with ``init``: the same optimiser, augmentation and budget as the supervised row).
* ``mcsc``: CNN + Transformer cross teaching with the multi-scale contrast (``mcsc.yaml``).
* ``actionpp``: ACTION++ stage 3 (``actionpp.yaml``), trained from scratch, or from a stages 1-2 pretraining
  on the same labeled cases with ``--actionpp-pretrain-steps``.
Ablation rows (``--rows``): ``cross-teaching`` (MCSC without contrast), ``action`` (no SAACL, constant tau),
``actionpp-const-tau``, ``mean-teacher`` (ACTION++ without either contrast).

Protocols:
* hippocampus: ``../shared/data/Task04_Hippocampus``; 40 evaluation cases drawn with seed 0, the other 168
  are the training pool; labeled = the first N cases of the pool (2, 5, 10, 20), the rest unlabeled.
* acdc: ``../shared/data/ACDC`` and its ``splits.json`` (SSL4MIS: 70 training patients, 10 evaluation
  patients = 20 volumes); labeled = the first N patients of the train list, both frames (1, 3, 7).

Run (CPU-sized defaults; raise ``--steps`` on a GPU, e.g. ``--steps 30000`` for the published budgets):
``.venv/bin/python benchmarks/accuracy.py --dataset hippocampus``
``.venv/bin/python benchmarks/accuracy.py --dataset acdc --set data.patch_size=[128,128]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_label_efficiency import make_pool_splits  # same evaluation ids as the label-efficiency benchmark

from medcl.config import load_config
from medcl.engine.run import train
from medcl.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DATASETS = {
    "hippocampus": {"folder": "Task04_Hippocampus", "labels": [2, 5, 10, 20], "group_by": None},
    "acdc": {"folder": "ACDC", "labels": [1, 3, 7], "group_by": r"patient\d+"},
}


@dataclass(frozen=True)
class Row:
    """One table row: the config trained per cell, its overrides, and the method it needs registered."""

    config: str
    method: str
    overrides: tuple[str, ...] = ()
    init: str | None = None  # "chaitanya" or "actionpp": the pretraining the cell starts from
    label: str = ""


ROWS: dict[str, Row] = {
    "supervised": Row("supervised.yaml", "supervised", label="supervised only"),
    # The supervised recipe (optimiser, augmentation, budget) from the pretrained weights: only the init differs.
    "chaitanya": Row(
        "supervised.yaml", "pretrain_local", init="chaitanya", label="Chaitanya G^D+L fine-tune"
    ),
    "mcsc": Row("mcsc.yaml", "mcsc", label="MCSC"),
    "cross-teaching": Row(
        "mcsc.yaml", "mcsc", ("method.contrast_weight=0",), label="cross teaching (MCSC, no contrast)"
    ),
    "actionpp": Row("actionpp.yaml", "actionpp", init="actionpp", label="ACTION++"),
    "action": Row(
        "actionpp.yaml",
        "actionpp",
        ("method.saacl.weight=0", "method.schedule.kind=constant"),
        init="actionpp",
        label="ACTION (no SAACL, constant tau)",
    ),
    "actionpp-const-tau": Row(
        "actionpp.yaml",
        "actionpp",
        ("method.schedule.kind=constant",),
        init="actionpp",
        label="ACTION++, constant tau",
    ),
    "mean-teacher": Row(
        "actionpp.yaml",
        "actionpp",
        ("method.anco.weight=0", "method.saacl.weight=0"),
        init="actionpp",
        label="mean teacher",
    ),
}
DEFAULT_ROWS = ("supervised", "chaitanya", "mcsc", "actionpp")


@dataclass
class Cell:
    dice: list[float] = field(default_factory=list)
    hd95: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "n/a"
    mean = statistics.mean(values)
    return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def markdown(table: dict[str, dict[int, Cell]], labels: list[int], unit: str) -> str:
    head = "| method | " + " | ".join(f"N = {n}" for n in labels) + " |"
    lines = [head, "|---" * (len(labels) + 1) + "|"]
    for row, cells in table.items():
        parts = []
        for n in labels:
            c = cells[n]
            hd = f" ({fmt(c.hd95, 2)} {unit})" if c.hd95 else ""
            parts.append(f"{fmt(c.dice)}{hd}")
        lines.append(f"| {ROWS[row].label} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="hippocampus")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), help=f"default: {' '.join(DEFAULT_ROWS)}")
    parser.add_argument("--labels", type=int, nargs="+", help="labeled counts (default per dataset)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=300, help="training steps of every cell")
    parser.add_argument("--global-steps", type=int, default=300, help="Chaitanya G^D pretraining steps")
    parser.add_argument("--local-steps", type=int, default=200, help="Chaitanya L^R pretraining steps")
    parser.add_argument(
        "--actionpp-pretrain-steps",
        type=int,
        default=0,
        help="ACTION++ stages 1-2 steps per labeled set and seed (0: stage 3 from scratch)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="overrides, every run")
    parser.add_argument(
        "--row-set",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="override for the rows named NAME or whose method is NAME, e.g. mcsc:method.cps_rampup_steps=200",
    )
    parser.add_argument("--output", default="bench_runs/accuracy")
    parser.add_argument("--tracking-uri", help="MLflow store (default: sqlite under --output)")
    args = parser.parse_args()

    spec = DATASETS[args.dataset]
    labels = args.labels or spec["labels"]
    rows = [r for r in (args.rows or DEFAULT_ROWS) if ROWS[r].method in METHODS]
    row_sets: dict[str, list[str]] = {}
    for item in args.row_set:
        name, sep, override = item.partition(":")
        if not sep or "=" not in override:
            parser.error(f"--row-set {item!r}: expected NAME:KEY=VALUE")
        row_sets.setdefault(name, []).append(override)
    skipped = sorted(set(args.rows or DEFAULT_ROWS) - set(rows))
    if skipped:
        print(f"rows skipped (method not available in this medcl): {', '.join(skipped)}")
    out = Path(args.output).resolve() / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    splits = make_pool_splits(args.dataset, out)
    data = DATA / spec["folder"]
    configs = REPO / "configs" / args.dataset
    stamp = time.strftime("%Y%m%d-%H%M%S")

    import mlflow

    from medcl.tracking.mlflow_tracking import get_or_create_experiment, resolve_store

    uri, artifact_root = resolve_store(args.tracking_uri, out)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment = f"{args.dataset}-accuracy"
    parent = client.create_run(
        get_or_create_experiment(experiment, artifact_root),
        run_name=f"accuracy-{args.dataset}-{stamp}",
        tags={"medcl.benchmark": "accuracy", "medcl.dataset": args.dataset},
    ).info.run_id
    common = [
        f"data.path={data}",
        f"data.splits={splits}",
        f"output={out}",
        f"tracking.experiment={experiment}",
        *([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else []),
        *args.overrides,
    ]
    group = [f"data.group_by={spec['group_by']}"] if spec["group_by"] else []
    tags = {"medcl.benchmark": "accuracy", "mlflow.parentRunId": parent}

    def run(config: str, name: str, extra: list[str]) -> tuple[Any, float]:
        cfg = load_config(configs / config, [*common, f"tracking.run_name={name}-{stamp}", *extra])
        start = time.perf_counter()
        result = train(cfg, progress=False, tags=tags)
        return result, time.perf_counter() - start

    status = "FAILED"
    try:
        pretrained: dict[str, str] = {}
        if "chaitanya" in rows:
            g, _ = run("pretrain_global.yaml", "global", [f"train.steps={args.global_steps}"])
            local, _ = run(
                "pretrain_local.yaml",
                "local",
                [f"train.steps={args.local_steps}", f"init={g.last_checkpoint}"],
            )
            pretrained["chaitanya"] = str(local.last_checkpoint)

        table = {row: {n: Cell() for n in labels} for row in rows}
        for n in labels:
            for seed in args.seeds:
                cell_common = [f"train.seed={seed}", f"data.labeled={n}", *group]
                actionpp_init = None
                if args.actionpp_pretrain_steps and any(ROWS[r].init == "actionpp" for r in rows):
                    pre, _ = run(
                        "actionpp_pretrain.yaml",
                        f"actionpp-pretrain-n{n}-s{seed}",
                        [*cell_common, f"train.steps={args.actionpp_pretrain_steps}"],
                    )
                    actionpp_init = str(pre.last_checkpoint)
                for row in rows:
                    recipe = ROWS[row]
                    extra = [
                        *cell_common,
                        f"train.steps={args.steps}",
                        f"val.every={args.steps}",
                        "tracking.log_model=false",
                        *recipe.overrides,
                        *row_sets.get(recipe.method, []),
                        *(row_sets.get(row, []) if row != recipe.method else []),
                    ]
                    init = pretrained.get("chaitanya") if recipe.init == "chaitanya" else actionpp_init
                    if recipe.init and init:
                        extra.append(f"init={init}")
                    result, seconds = run(recipe.config, f"{row}-n{n}-s{seed}", extra)
                    cell = table[row][n]
                    cell.dice.append(result.best_dice)
                    hd = [v["hd95"] for v in result.best_per_class.values() if v["hd95"] == v["hd95"]]
                    if hd:
                        cell.hd95.append(statistics.mean(hd))
                    cell.seconds.append(seconds)
                    print(
                        f"{row:>18} n={n:<3} seed={seed}: Dice {result.best_dice:.4f}"
                        f"{f' HD95 {cell.hd95[-1]:.2f}' if hd else ''} ({seconds:.0f} s)",
                        flush=True,
                    )

        unit = "voxels" if args.dataset == "acdc" else "mm"
        md = markdown(table, labels, unit)
        protocol = (
            f"{args.dataset}: {spec['folder']}, splits {splits.name} (evaluation = its val ids), labeled = the "
            f"first N {'patients' if spec['group_by'] else 'cases'} of the pool, the rest unlabeled; {args.steps} "
            f"training steps per cell, seeds {args.seeds}; "
            + (
                f"Chaitanya pretraining G^D {args.global_steps} + L^R {args.local_steps} steps; "
                if "chaitanya" in rows
                else ""
            )
            + (
                f"ACTION++ stages 1-2: {args.actionpp_pretrain_steps or 'none'} steps; "
                if any(ROWS[r].init == "actionpp" for r in rows)
                else ""
            )
            + "metric: "
            f"final model, mean foreground Dice (and HD95, {unit}) on whole 3D volumes, mean ± sd over seeds; "
            f"overrides {args.overrides}, per row {args.row_set}"
        )
        report = {
            "protocol": protocol,
            "table": {
                row: {
                    str(n): {"dice": c.dice, "hd95": c.hd95, "seconds": [round(s) for s in c.seconds]}
                    for n, c in cells.items()
                }
                for row, cells in table.items()
            },
            "markdown": md,
        }
        print(f"\n{md}\n\n{protocol}")
        (out / f"accuracy-{stamp}.md").write_text(f"{md}\n\n{protocol}\n")
        (out / f"accuracy-{stamp}.json").write_text(json.dumps(report, indent=1))
        for row, cells in table.items():
            for n, c in cells.items():
                if c.dice:
                    client.log_metric(parent, f"dice/{row}/n{n}", statistics.mean(c.dice))
                if c.hd95:
                    client.log_metric(parent, f"hd95/{row}/n{n}", statistics.mean(c.hd95))
        client.log_text(parent, f"{md}\n\n{protocol}\n", "accuracy.md")
        client.log_dict(parent, report, "accuracy.json")
        status = "FINISHED"
    finally:
        client.set_terminated(parent, status)
    print(f"MLflow: experiment {experiment!r}, run {parent} in {uri}")


if __name__ == "__main__":
    main()
