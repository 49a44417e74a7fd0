"""The accuracy table users compare methods with: rows = methods, columns = labeled counts, on real data.

Every cell trains one recipe with the same labeled cases and seed, then scores a model on whole 3D volumes of
the evaluation ids: mean foreground Dice and HD95 (ACDC: voxels of the stored grid, its spacing is unknown;
Hippocampus: mm), mean (and spread) over seeds. The table is printed as markdown, written with a label-efficiency
figure (``accuracy-<stamp>.png``: Dice vs labeled count, one line per row) and logged to MLflow as one parent run
(``accuracy-<dataset>``) whose children are the training runs of every cell. Each finished cell is appended to
``cells.jsonl`` at once, so an interrupted grid keeps what it measured.

Two budgets:

* ``--recipes paper`` (default): ``configs/<dataset>/<row>.yaml`` with ``--steps`` for every cell; validation
  runs once, at the last step (the final model, no checkpoint selection).
* ``--recipes cpu``: the frozen CPU protocol of issue 12, ``configs/<dataset>/cpu/<row>.yaml``. Each recipe
  carries its own ``train.steps``, chosen so that one run fills about 20 minutes of a 2-core CPU, and its own
  ``val.every``; the cell reports the best validation (the checkpoint a user keeps). ``--budget-scale F``
  multiplies every recipe's steps (and validation interval) by F (smoke runs, or a GPU running the CPU budget
  as is: ``1``).

Rows (each included only where its method is registered and, with ``--recipes cpu``, its config exists):

* ``supervised``: the supervised baseline on the labeled cases.
* ``fixmatch``: one network, weak-to-strong consistency on the unlabeled slices (``fixmatch.yaml``).
* ``fixmatch-fp``: FixMatch plus UniMatch's feature-perturbation stream (``method.fp_dropout``; cpu recipe
  ``fixmatch_fp.yaml``).
* ``chaitanya``: G^D then L^R pretraining once on every training-pool image (labels never read), then the
  supervised recipe initialised from it (``pretrain_global.yaml``, ``pretrain_local.yaml``, then
  ``supervised.yaml`` with ``init``: the same optimiser, augmentation and budget as the supervised row).
* ``mcsc``: CNN + Transformer cross teaching with the multi-scale contrast (``mcsc.yaml``).
* ``mcsc-cutmix``: MCSC trained on CPS's CutMix strong view of the unlabeled slices (``method.mix``; cpu recipe
  ``mcsc_cutmix.yaml``).
* ``actionpp``: ACTION++ stage 3 (``actionpp.yaml``), trained from scratch.
* ``actionpp-pretrained``: the same stage 3 from ACTION++'s own stages 1-2 (``actionpp_pretrain.yaml``: global
  KL distillation, then + local KL + the supervised loss), pretrained per labeled set and seed on the same
  labeled cases and unlabeled pool; ``--actionpp-pretrain-steps``, else the cpu recipe's own steps.
Ablation rows (``--rows``): ``cross-teaching`` (MCSC without contrast), ``action`` (no SAACL, constant tau),
``actionpp-const-tau``, ``mean-teacher`` (ACTION++ without either contrast).

Protocols:
* hippocampus: ``../shared/data/Task04_Hippocampus``; 40 evaluation cases drawn with seed 0, the other 168
  are the training pool; labeled = the first N cases of the pool (2, 5, 10, 20), the rest unlabeled.
* acdc: ``../shared/data/ACDC`` and its ``splits.json`` (SSL4MIS: 70 training patients, 10 evaluation
  patients = 20 volumes); labeled = the first N patients of the train list, both frames (1, 3, 7).

``--jobs N`` trains N cells at once in separate processes (a GPU machine; on the 2-core CPU keep 1).
``--prepare DIR`` writes a copy of ACDC resampled to the CPU protocol's 2 x 2 mm grid (a third of the bytes,
for a machine the full dataset cannot be carried to); train on it with ``--data-root DIR``: the recipes'
``data.spacing`` then resamples nothing.

Run (CPU-sized defaults; raise ``--steps`` on a GPU, e.g. ``--steps 30000`` for the published budgets):
``.venv/bin/python benchmarks/accuracy.py --dataset hippocampus``
``.venv/bin/python benchmarks/accuracy.py --dataset acdc --recipes cpu --labels 3 --rows supervised fixmatch mcsc``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench_label_efficiency import make_pool_splits  # same evaluation ids as the label-efficiency benchmark

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
    "fixmatch": Row("fixmatch.yaml", "fixmatch", label="FixMatch (one network, weak-to-strong)"),
    "fixmatch-fp": Row(
        "fixmatch.yaml",
        "fixmatch",
        ("method.fp_dropout=0.5",),
        label="FixMatch + feature perturbation (UniMatch FP)",
    ),
    "mcsc": Row("mcsc.yaml", "mcsc", label="MCSC"),
    "mcsc-cutmix": Row("mcsc.yaml", "mcsc", ("method.mix=cutmix",), label="MCSC + CutMix strong view"),
    "cross-teaching": Row(
        "mcsc.yaml", "mcsc", ("method.contrast_weight=0",), label="cross teaching (MCSC, no contrast)"
    ),
    "actionpp": Row("actionpp.yaml", "actionpp", label="ACTION++"),
    "actionpp-pretrained": Row(
        "actionpp.yaml", "actionpp", init="actionpp", label="ACTION++ from its stages 1-2 pretraining"
    ),
    "action": Row(
        "actionpp.yaml",
        "actionpp",
        ("method.saacl.weight=0", "method.schedule.kind=constant"),
        label="ACTION (no SAACL, constant tau)",
    ),
    "actionpp-const-tau": Row(
        "actionpp.yaml", "actionpp", ("method.schedule.kind=constant",), label="ACTION++, constant tau"
    ),
    "mean-teacher": Row(
        "actionpp.yaml",
        "actionpp",
        ("method.anco.weight=0", "method.saacl.weight=0"),
        label="mean teacher",
    ),
}
DEFAULT_ROWS = ("supervised", "chaitanya", "mcsc", "actionpp")


@dataclass
class Cell:
    dice: list[float] = field(default_factory=list)
    hd95: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, record: dict[str, Any]) -> None:
        """Append one measured cell (a ``cells.jsonl`` record) to the figures of this table cell."""
        self.dice.append(record["dice"])
        if record.get("hd95") is not None:
            self.hd95.append(record["hd95"])
        self.seconds.append(record["seconds"])


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "n/a"
    mean = statistics.mean(values)
    return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def markdown(
    table: dict[str, dict[int, Cell]], labels: list[int], unit: str, bound: tuple[int, Cell] | None = None
) -> str:
    """The table, one row per method, one column per labeled count; ``bound`` (the all-labeled
    supervised run) as a line below it."""
    head = "| method | " + " | ".join(f"N = {n}" for n in labels) + " |"
    lines = [head, "|---" * (len(labels) + 1) + "|"]
    for row, cells in table.items():
        parts = []
        for n in labels:
            c = cells[n]
            hd = f" ({fmt(c.hd95, 2)} {unit})" if c.hd95 else ""
            parts.append(f"{fmt(c.dice)}{hd}")
        lines.append(f"| {ROWS[row].label} | " + " | ".join(parts) + " |")
    if bound is not None:
        n, c = bound
        hd = f" ({fmt(c.hd95, 2)} {unit})" if c.hd95 else ""
        lines.append(f"\nUpper bound, supervised only with all {n} labeled: {fmt(c.dice)}{hd}")
    return "\n".join(lines)


def exit_with_parent() -> None:
    """Worker initializer: the worker exits as soon as the benchmark process that started it is gone.

    A killed benchmark (``kill -9``, a closed terminal) runs no ``finally``, and without this its spawned workers
    went on training, unseen, on the cores the next job needed (measured: a 20-minute cell kept running for 45
    minutes after its parent was killed). A daemon thread waits on multiprocessing's parent sentinel, which
    becomes ready when the parent dies, on every platform.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Train one cell (in a worker process) and return its figures; skipped after the deadline."""
    from medcl.engine.run import train
    from medcl.services.configs import load_config

    if job["deadline"] and time.time() > job["deadline"]:
        return {**job["key"], "skipped": True}
    cfg = load_config(job["config"], job["overrides"])
    start = time.perf_counter()
    result = train(cfg, progress=False, tags=job["tags"])
    seconds = time.perf_counter() - start
    dice = result.best_dice if job["select_best"] else result.final_dice
    hd = [v["hd95"] for v in result.best_per_class.values() if v["hd95"] == v["hd95"]]
    return {
        **job["key"],
        "dice": dice,
        "final_dice": result.final_dice,
        "best_step": result.best_step,
        "steps": result.steps,
        "hd95": statistics.mean(hd) if hd else None,
        "seconds": round(seconds, 1),
        "train_seconds": round(seconds - result.validation_seconds, 1),
        "run_id": result.run_id,
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
    }


def prepare_acdc(dest: Path, spacing: tuple[float, float, float] = (2.0, 2.0, 1.0)) -> None:
    """Write ACDC resampled to ``spacing`` (images bilinear, labels nearest: medcl's own ``Spacingd`` step)."""
    import shutil

    import nibabel as nib
    import numpy as np
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Spacingd

    src = DATA / "ACDC"
    out = dest / "ACDC"
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name in ("dataset.json", "splits.json", "PROVENANCE.md"):
        shutil.copy2(src / name, out / name)
    load = Compose(
        [
            LoadImaged(["image", "label"], image_only=True),
            EnsureChannelFirstd(["image", "label"]),
            Spacingd(["image", "label"], pixdim=spacing, mode=("bilinear", "nearest")),
        ]
    )
    for image in sorted((src / "imagesTr").glob("*.nii.gz")):
        d = load({"image": str(image), "label": str(src / "labelsTr" / image.name)})
        affine = np.asarray(d["image"].affine)
        nib.save(
            nib.Nifti1Image(np.asarray(d["image"][0], np.float32), affine), out / "imagesTr" / image.name
        )
        nib.save(nib.Nifti1Image(np.asarray(d["label"][0], np.uint8), affine), out / "labelsTr" / image.name)
    print(f"ACDC at {spacing} mm in {out}")


def figure(
    table: dict[str, dict[int, Cell]],
    labels: list[int],
    path: Path,
    title: str,
    bound: tuple[int, Cell] | None = None,
) -> None:
    """Label-efficiency curve: mean Dice (+- sd) vs labeled count, supervised-only dashed, and ``bound`` (the
    supervised run with every training case labeled) as a dashed horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for row, cells in table.items():
        ns = [n for n in labels if cells[n].dice]
        if not ns:
            continue
        means = [statistics.mean(cells[n].dice) for n in ns]
        sds = [statistics.stdev(cells[n].dice) if len(cells[n].dice) > 1 else 0.0 for n in ns]
        style = "--" if row == "supervised" else "-"
        ax.errorbar(ns, means, yerr=sds, fmt=f"{style}o", capsize=3, label=ROWS[row].label)
    if bound is not None and bound[1].dice:
        n, c = bound
        ax.axhline(statistics.mean(c.dice), color="0.4", ls="--", lw=1, label=f"supervised, all {n} labeled")
    ax.set_xlabel("labeled count")
    ax.set_ylabel("mean foreground Dice (val)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(labels, [str(n) for n in labels])
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def rebuild(
    files: list[Path],
    labels: list[int] | None,
    rows: list[str] | None,
    out: Path,
    dataset: str,
    bound: int | None = None,
) -> None:
    """Table (markdown) and figure from the ``cells.jsonl`` of one or more runs (skipped cells ignored).

    A cell measured again (the same row, labeled count and seed, e.g. after a recipe changed) replaces the
    earlier one: the later file, or the later line of one file, wins.

    ``bound``: the labeled count of the all-labeled supervised cells, shown as the upper bound line.
    """
    records = [
        json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    latest = {(r.get("row"), r.get("n"), r.get("seed")): r for r in records if not r.get("skipped")}
    records = [r for r in latest.values() if r.get("row") in ROWS]
    bound_cell = None
    if bound is not None:
        bound_cell = (bound, Cell())
        for r in records:
            if r["row"] == "supervised" and r["n"] == bound:
                bound_cell[1].add(r)
        records = [r for r in records if r["n"] != bound]
    labels = labels or sorted({r["n"] for r in records})
    rows = rows or [row for row in ROWS if any(r["row"] == row for r in records)]
    table = {row: {n: Cell() for n in labels} for row in rows}
    for r in records:
        if r["row"] in table and r["n"] in table[r["row"]]:
            table[r["row"]][r["n"]].add(r)
    md = markdown(table, labels, "voxels" if dataset == "acdc" else "mm", bound_cell)
    out.mkdir(parents=True, exist_ok=True)
    figure(
        table,
        labels,
        out / f"accuracy-{dataset}.png",
        f"{dataset}: {len(records)} runs, best validation",
        bound_cell,
    )
    (out / f"accuracy-{dataset}.md").write_text(md + "\n", encoding="utf-8")
    print(md)
    print(f"figure: {out / f'accuracy-{dataset}.png'}")


def recipe_steps(configs: Path, recipes: str, config: str, given: int | None, paper_steps: int) -> int:
    """A pretraining stage's steps: those given, else the cpu recipe's own, else ``paper_steps``."""
    from medcl.services.configs import load_config

    if given is None and recipes == "cpu" and (configs / config).is_file():
        given = load_config(configs / config, []).train.steps
    return paper_steps if given is None else given


def pretraining_steps(
    configs: Path, recipes: str, global_steps: int | None, local_steps: int | None
) -> tuple[int, int]:
    """Chaitanya G^D and L^R steps: those given, else the cpu recipes' own, else 300 and 200."""
    return (
        recipe_steps(configs, recipes, "pretrain_global.yaml", global_steps, 300),
        recipe_steps(configs, recipes, "pretrain_local.yaml", local_steps, 200),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="hippocampus")
    parser.add_argument("--recipes", choices=("paper", "cpu"), default="paper")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), help=f"default: {' '.join(DEFAULT_ROWS)}")
    parser.add_argument("--labels", type=int, nargs="+", help="labeled counts (default per dataset)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--seed-rows", nargs="+", help="rows trained with every seed; other rows only with the first"
    )
    parser.add_argument("--steps", type=int, help="training steps of every cell (paper: default 300)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="cpu: multiply each recipe's steps")
    parser.add_argument(
        "--global-steps",
        type=int,
        help="Chaitanya G^D pretraining steps (default: the cpu recipe's own, else 300)",
    )
    parser.add_argument(
        "--local-steps",
        type=int,
        help="Chaitanya L^R pretraining steps (default: the cpu recipe's own, else 200)",
    )
    parser.add_argument(
        "--chaitanya-init",
        metavar="CHECKPOINT",
        help="the chaitanya row starts from this G^D + L^R checkpoint (e.g. an earlier invocation's "
        "runs/local-*/checkpoints/last.pt) instead of pretraining again: more seeds or N on one pretraining",
    )
    parser.add_argument(
        "--actionpp-pretrain-steps",
        type=int,
        help="ACTION++ stages 1-2 steps of the actionpp-pretrained row, per labeled set and seed (default: "
        "the cpu recipe's own, else 300)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="overrides, every run")
    parser.add_argument(
        "--row-set",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="override for the rows named NAME or whose method is NAME, e.g. mcsc:method.cps_rampup_steps=200",
    )
    parser.add_argument("--jobs", type=int, default=1, help="cells trained at once (processes)")
    parser.add_argument("--deadline", type=float, help="seconds: cells not started by then are skipped")
    parser.add_argument("--data-root", type=Path, help=f"folder holding the dataset (default {DATA})")
    parser.add_argument("--prepare", type=Path, metavar="DIR", help="write ACDC at 2 x 2 mm to DIR and exit")
    parser.add_argument("--output", default="bench_runs/accuracy")
    parser.add_argument("--tracking-uri", help="MLflow store (default: sqlite under --output)")
    parser.add_argument(
        "--no-tracking", action="store_true", help="no MLflow (files only: a GPU machine without it)"
    )
    parser.add_argument(
        "--from-cells",
        nargs="+",
        type=Path,
        metavar="JSONL",
        help="no training: rebuild the table and figure from cells.jsonl files of earlier runs",
    )
    parser.add_argument(
        "--bound",
        type=int,
        metavar="N",
        help="with --from-cells: the supervised cells at N labeled are the all-labeled upper bound (a dashed line)",
    )
    parser.add_argument(
        "--other-label-rows",
        nargs="+",
        help="rows trained at the labeled counts after the first (default: all)",
    )
    args = parser.parse_args()
    if args.chaitanya_init and not Path(args.chaitanya_init).is_file():
        parser.error(f"--chaitanya-init {args.chaitanya_init}: no such checkpoint file")
    if args.prepare:
        prepare_acdc(args.prepare)
        return
    if args.from_cells:
        rebuild(args.from_cells, args.labels, args.rows, Path(args.output), args.dataset, args.bound)
        return

    spec = DATASETS[args.dataset]
    labels = args.labels or spec["labels"]
    configs = REPO / "configs" / args.dataset / ("cpu" if args.recipes == "cpu" else "")

    def recipe(row: str) -> tuple[str, tuple[str, ...]]:
        """A row's config file and overrides: a cpu recipe of the row's own name (e.g. ``cpu/mean_teacher.yaml``)
        wins over the method's config plus the row's overrides."""
        own = f"{row.replace('-', '_')}.yaml"
        if args.recipes == "cpu" and (configs / own).is_file():
            return own, ()
        return ROWS[row].config, ROWS[row].overrides

    def has_recipes(row: str) -> bool:
        """The row's config exists, and its pretraining configs (chaitanya: unless --chaitanya-init)."""
        needed = [recipe(row)[0]]
        if ROWS[row].init == "chaitanya" and not args.chaitanya_init:
            needed += ["pretrain_global.yaml", "pretrain_local.yaml"]
        if ROWS[row].init == "actionpp":
            needed.append("actionpp_pretrain.yaml")
        return all((configs / config).is_file() for config in needed)

    rows = [r for r in (args.rows or DEFAULT_ROWS) if ROWS[r].method in METHODS and has_recipes(r)]
    row_sets: dict[str, list[str]] = {}
    for item in args.row_set:
        name, sep, override = item.partition(":")
        if not sep or "=" not in override:
            parser.error(f"--row-set {item!r}: expected NAME:KEY=VALUE")
        row_sets.setdefault(name, []).append(override)
    skipped = sorted(set(args.rows or DEFAULT_ROWS) - set(rows))
    if skipped:
        print(f"rows skipped (method not registered or no {configs.name} recipe): {', '.join(skipped)}")
    out = Path(args.output).resolve() / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    data = (args.data_root or DATA) / spec["folder"]
    splits = make_pool_splits(args.dataset, out, data)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    deadline = time.time() + args.deadline if args.deadline else None
    threads = max(1, (os.cpu_count() or 1) // max(args.jobs, 1))

    from medcl.services.configs import load_config

    args.global_steps, args.local_steps = pretraining_steps(
        configs, args.recipes, args.global_steps, args.local_steps
    )
    args.actionpp_pretrain_steps = recipe_steps(
        configs, args.recipes, "actionpp_pretrain.yaml", args.actionpp_pretrain_steps, 300
    )

    experiment = f"{args.dataset}-accuracy"
    client = parent = uri = None
    if not args.no_tracking:
        import mlflow

        from medcl.tracking.mlflow_tracking import get_or_create_experiment, resolve_store

        uri, artifact_root = resolve_store(args.tracking_uri, out)
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(uri)
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
        f"train.threads={threads}",
        *([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else []),
        *(["tracking.enabled=false"] if args.no_tracking else []),
        *args.overrides,
    ]
    group = [f"data.group_by={spec['group_by']}"] if spec["group_by"] else []
    tags = {"medcl.benchmark": "accuracy", **({"mlflow.parentRunId": parent} if parent else {})}

    def job(config: str, name: str, extra: list[str], key: dict[str, Any], select_best: bool) -> dict:
        return {
            "config": str(configs / config),
            "overrides": [*common, f"tracking.run_name={name}-{stamp}", *extra],
            "tags": tags,
            "key": key,
            "deadline": deadline,
            "select_best": select_best,
        }

    def budget(config: str) -> list[str]:
        """Steps (and validation interval) of a cell: --steps, else the cpu recipe's own, scaled."""
        if args.steps:
            return [f"train.steps={args.steps}", f"val.every={args.steps}"]
        if args.recipes == "paper":
            return ["train.steps=300", "val.every=300"]
        cfg = load_config(configs / config, [])
        steps = max(1, round(cfg.train.steps * args.budget_scale))
        every = max(1, round(cfg.val.every * args.budget_scale))
        return [f"train.steps={steps}", f"val.every={every}"]

    results_file = out / "cells.jsonl"
    status = "FAILED"
    pool = ProcessPoolExecutor(
        max_workers=args.jobs, mp_context=get_context("spawn"), initializer=exit_with_parent
    )
    try:
        pretrained: dict[str, str] = {}
        if "chaitanya" in rows and args.chaitanya_init:
            pretrained["chaitanya"] = str(Path(args.chaitanya_init).resolve())
        elif "chaitanya" in rows:
            g = pool.submit(
                run_cell,
                job(
                    "pretrain_global.yaml",
                    "global",
                    [f"train.steps={args.global_steps}"],
                    {"row": "global"},
                    False,
                ),
            ).result()
            local = pool.submit(
                run_cell,
                job(
                    "pretrain_local.yaml",
                    "local",
                    [f"train.steps={args.local_steps}", f"init={g['last_checkpoint']}"],
                    {"row": "local"},
                    False,
                ),
            ).result()
            pretrained["chaitanya"] = local["last_checkpoint"]

        def runs(row: str, n: int, seed: int) -> bool:
            """Whether the grid trains this cell (--seed-rows / --other-label-rows leave some out)."""
            if seed != args.seeds[0] and args.seed_rows and row not in args.seed_rows:
                return False
            return not (n != labels[0] and args.other_label_rows and row not in args.other_label_rows)

        actionpp_init: dict[tuple[int, int], str] = {}
        if any(ROWS[r].init == "actionpp" for r in rows):
            futures = {
                (n, seed): pool.submit(
                    run_cell,
                    job(
                        "actionpp_pretrain.yaml",
                        f"actionpp-pretrain-n{n}-s{seed}",
                        [
                            f"train.seed={seed}",
                            f"data.labeled={n}",
                            *group,
                            f"train.steps={args.actionpp_pretrain_steps}",
                        ],
                        {"row": "actionpp-pretrain", "n": n, "seed": seed},
                        False,
                    ),
                )
                for n in labels
                for seed in args.seeds
                if any(ROWS[r].init == "actionpp" and runs(r, n, seed) for r in rows)
            }
            actionpp_init = {k: f.result()["last_checkpoint"] for k, f in futures.items()}

        # Cells in priority order: the first labeled count (every seed), then the other counts.
        cells = []
        for seed in args.seeds:
            for n in labels:
                for row in rows:
                    if not runs(row, n, seed):
                        continue
                    config, overrides = recipe(row)
                    extra = [
                        f"train.seed={seed}",
                        f"data.labeled={n}",
                        *group,
                        *budget(config),
                        "tracking.log_model=false",
                        *overrides,
                        *row_sets.get(ROWS[row].method, []),
                        *(row_sets.get(row, []) if row != ROWS[row].method else []),
                    ]
                    kind = ROWS[row].init
                    init = (
                        pretrained.get("chaitanya") if kind == "chaitanya" else actionpp_init.get((n, seed))
                    )
                    if kind and init:
                        extra.append(f"init={init}")
                    key = {"row": row, "n": n, "seed": seed}
                    cells.append(job(config, f"{row}-n{n}-s{seed}", extra, key, args.recipes == "cpu"))

        cells.sort(
            key=lambda c: labels.index(c["key"]["n"]) > 0
        )  # stable: seeds, then rows, keep their order
        table = {row: {n: Cell() for n in labels} for row in rows}
        futures = [pool.submit(run_cell, c) for c in cells]
        for future in as_completed(futures):
            try:
                r = future.result()
            except Exception as exc:  # one failed cell must not lose the others
                print(f"cell failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            with results_file.open("a") as f:
                f.write(json.dumps({"stamp": stamp, **r}) + "\n")
            if r.get("skipped"):
                print(f"{r['row']:>18} n={r['n']:<3} seed={r['seed']}: skipped (deadline)", flush=True)
                continue
            table[r["row"]][r["n"]].add(r)
            print(
                f"{r['row']:>18} n={r['n']:<3} seed={r['seed']}: Dice {r['dice']:.4f} (best step {r['best_step']} "
                f"of {r['steps']}, final {r['final_dice']:.4f}) {r['seconds']:.0f} s",
                flush=True,
            )

        unit = "voxels" if args.dataset == "acdc" else "mm"
        md = markdown(table, labels, unit)
        budget_text = (
            f"{args.steps} training steps per cell"
            if args.steps
            else "each cpu recipe's own steps" + (f" x {args.budget_scale}" if args.budget_scale != 1 else "")
            if args.recipes == "cpu"
            else "300 training steps per cell"
        )
        protocol = (
            f"{args.dataset}: {spec['folder']} ({data}), splits {splits.name} (evaluation = its val ids), labeled = "
            f"the first N {'patients' if spec['group_by'] else 'cases'} of the pool, the rest unlabeled; "
            f"{args.recipes} recipes ({configs.relative_to(REPO)}), {budget_text}, seeds {args.seeds}"
            + (f" (rows {args.seed_rows} only after the first)" if args.seed_rows else "")
            + "; "
            + (
                f"Chaitanya pretraining from {args.chaitanya_init}; "
                if "chaitanya" in rows and args.chaitanya_init
                else f"Chaitanya pretraining G^D {args.global_steps} + L^R {args.local_steps} steps; "
                if "chaitanya" in rows
                else ""
            )
            + (
                f"ACTION++ stages 1-2: {args.actionpp_pretrain_steps} steps per labeled set and seed; "
                if any(ROWS[r].init == "actionpp" for r in rows)
                else ""
            )
            + "metric: "
            + ("best validation" if args.recipes == "cpu" else "final model")
            + f", mean foreground Dice (and HD95, {unit}) on whole 3D volumes, mean ± sd over seeds; "
            f"overrides {args.overrides}, per row {args.row_set}"
        )
        report = {
            "protocol": protocol,
            "table": {
                row: {
                    str(n): {"dice": c.dice, "hd95": c.hd95, "seconds": [round(s) for s in c.seconds]}
                    for n, c in cells_.items()
                }
                for row, cells_ in table.items()
            },
            "markdown": md,
        }
        print(f"\n{md}\n\n{protocol}")
        png = out / f"accuracy-{stamp}.png"
        figure(table, labels, png, f"{args.dataset}, {args.recipes} recipes, {budget_text}")
        (out / f"accuracy-{stamp}.md").write_text(f"{md}\n\n{protocol}\n", encoding="utf-8")
        (out / f"accuracy-{stamp}.json").write_text(json.dumps(report, indent=1))
        if client is not None:
            for row, cells_ in table.items():
                for n, c in cells_.items():
                    if c.dice:
                        client.log_metric(parent, f"dice/{row}/n{n}", statistics.mean(c.dice))
                    if c.hd95:
                        client.log_metric(parent, f"hd95/{row}/n{n}", statistics.mean(c.hd95))
            client.log_text(parent, f"{md}\n\n{protocol}\n", "accuracy.md")
            client.log_dict(parent, report, "accuracy.json")
            client.log_artifact(parent, str(png))
        status = "FINISHED"
    finally:
        pool.shutdown(cancel_futures=True)
        if client is not None:
            client.set_terminated(parent, status)
    print(
        f"results in {out}"
        + (f"; MLflow: experiment {experiment!r}, run {parent} in {uri}" if client else "")
    )


if __name__ == "__main__":
    main()
