"""Exercise the GPU path: every method trains a few hundred steps on real data with mixed precision.

On a CUDA machine (``--device cuda``, the default when one is present) each job below runs through
:func:`medcl.engine.run.train` (the engine ``medcl train`` uses: pinned-memory loader with worker processes,
autocast at ``train.precision=auto``, cuDNN autotuning, validation on whole volumes, checkpoints) at the
papers' resolution, and one line per job reports steps/s (training steps only), the fraction of the training
time spent waiting for batches, peak GPU memory and the final validation Dice. With more than one GPU a
``torchrun`` DDP run of the supervised job follows. The whole check is sized for about 8 minutes on one
H100/H200.

| job | data | config | resolution |
| --- | --- | --- | --- |
| supervised | ACDC | configs/acdc/supervised.yaml | 256x256 slices, batch 12 |
| pretrain_global | ACDC | configs/acdc/pretrain_global.yaml | 192x192, G^D |
| pretrain_local | ACDC | configs/acdc/pretrain_local.yaml | 192x192 |
| mcsc | ACDC | configs/acdc/mcsc.yaml | 224x224, BasicUNet + SwinUNETR |
| actionpp_pretrain | ACDC | configs/acdc/actionpp_pretrain.yaml | 256x256, both stages |
| actionpp | ACDC | configs/acdc/actionpp.yaml | 256x256 |
| supervised_3d | LA2018 | configs/la2018/supervised.yaml | 112x112x80 patches |
| mcsc_3d | LA2018 | configs/la2018/mcsc.yaml | the config's 3D patches |

The methods' step-count schedules (warm-ups, ramps, stage 1) are shortened to fractions of ``--steps`` so that
every term runs. On a CPU, ``--tiny`` runs the same code with tiny networks, patches and step counts (the test
suite does, so this script cannot rot between GPU sessions).

The device machine has no ``../shared``: ``--prepare DIR`` copies a subset of the real data (the first ACDC
patients and LA2018 volumes, each with its ``dataset.json`` rewritten) into ``DIR`` to carry there.

Run: ``python benchmarks/device_check.py [--data-root ../shared/data] [--steps 200] [--jobs ...] [--tiny]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a bare copy of the repository, without `pip install`

from medcl.data.dataset import load_dataset  # noqa: E402
from medcl.data.splits import make_splits  # noqa: E402
from medcl.engine.run import train  # noqa: E402
from medcl.precision import resolve_precision  # noqa: E402
from medcl.services.configs import load_config  # noqa: E402

ACDC_GROUP = r"patient\d+"

# name -> (dataset folder, config, overrides at full size, overrides for --tiny)
TINY_2D = ["data.patch_size=[64, 64]", "model.features=[4, 4, 8, 8, 16, 4]", "val.sw_batch_size=64"]
TINY_MCSC = [
    "method.cnn.features=[4, 4, 8, 8, 16, 4]",
    "method.transformer.feature_size=12",
    "method.projector_hidden=16",
    "method.projector_dim=8",
    "method.contrast_warmup_steps=1",
    "method.cps_rampup_steps=1",
    "method.transformer.warmup_steps=1",
]
# MCSC's step-count schedules as fractions of --steps, so that every term runs within the check.
MCSC_SCHEDULE = [
    "method.contrast_warmup_steps={f10}",
    "method.cps_rampup_steps={f50}",
    "method.transformer.warmup_steps={f10}",
]
JOBS: dict[str, tuple[str, str, list[str], list[str]]] = {
    "supervised": ("ACDC", "configs/acdc/supervised.yaml", [], [*TINY_2D, "data.batch_size=2"]),
    "pretrain_global": (
        "ACDC",
        "configs/acdc/pretrain_global.yaml",
        [],
        [*TINY_2D, "method.volumes_per_batch=2", "method.hidden=32", "method.projection_dim=16"],
    ),
    "pretrain_local": (
        "ACDC",
        "configs/acdc/pretrain_local.yaml",
        [],
        [*TINY_2D, "method.volumes_per_batch=1"],
    ),
    "mcsc": (
        "ACDC",
        "configs/acdc/mcsc.yaml",
        MCSC_SCHEDULE,
        ["data.patch_size=[64, 64]", *TINY_MCSC, "val.sw_batch_size=64"],
    ),
    "actionpp_pretrain": (
        "ACDC",
        "configs/acdc/actionpp_pretrain.yaml",
        ["method.stage1_steps={f50}"],
        [*TINY_2D, "method.stage1_steps=1", "data.batch_size=2", "data.unlabeled_batch_size=2"],
    ),
    "actionpp": (
        "ACDC",
        "configs/acdc/actionpp.yaml",
        [],
        [
            *TINY_2D,
            "data.batch_size=2",
            "data.unlabeled_batch_size=2",
            "method.rep_dim=8",
            "method.anco.num_queries=8",
            "method.anco.num_negatives=16",
            "method.saacl.anchors_per_class=8",
            "method.saacl.queue_size=64",
        ],
    ),
    "supervised_3d": (
        "LA2018",
        "configs/la2018/supervised.yaml",
        [],
        [
            "data.patch_size=[32, 32, 32]",
            "model.features=[4, 4, 8, 8, 16, 4]",
            "data.batch_size=1",
            "val.sw_batch_size=4",
        ],
    ),
    "mcsc_3d": (
        "LA2018",
        "configs/la2018/mcsc.yaml",
        MCSC_SCHEDULE,
        [
            "data.patch_size=[64, 64, 64]",
            *TINY_MCSC,
            "data.batch_size=1",
            "data.unlabeled_batch_size=1",
            "val.sw_batch_size=4",
        ],
    ),
}


def prepare(data_root: Path, dest: Path, acdc_patients: int = 8, la_volumes: int = 4) -> None:
    """Copy the first ACDC patients (both frames) and LA2018 volumes into ``dest`` with their own dataset.json."""
    for name, keep in (("ACDC", acdc_patients), ("LA2018", la_volumes)):
        src, out = data_root / name, dest / name
        meta = json.loads((src / "dataset.json").read_text())
        if name == "ACDC":
            patients = sorted({Path(e["image"]).name.split("_")[0] for e in meta["training"]})[:keep]
            entries = [e for e in meta["training"] if Path(e["image"]).name.split("_")[0] in patients]
        else:
            entries = meta["training"][:keep]
        for folder in ("imagesTr", "labelsTr"):
            (out / folder).mkdir(parents=True, exist_ok=True)
        for e in entries:
            for key in ("image", "label"):
                shutil.copy2(src / e[key], out / e[key])
        meta.update(training=entries, numTraining=len(entries))
        (out / "dataset.json").write_text(json.dumps(meta, indent=1))
        for f in out.rglob("*"):
            f.chmod(0o644 if f.is_file() else 0o755)
    print(f"prepared {dest}: {sum(f.stat().st_size for f in dest.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


def splits_for(dataset: Path, out: Path) -> Path:
    """labeled / unlabeled / 1 val group of the (subset) dataset; ACDC groups the two frames of a patient."""
    info = load_dataset(dataset)
    group = ACDC_GROUP if dataset.name == "ACDC" else None
    n_groups = len({c.id.split("_")[0] for c in info.cases}) if group else len(info.cases)
    labeled = max(1, (n_groups - 1) // 2)
    splits = make_splits(info, labeled=labeled, val=1, seed=0, group_by=group)
    path = out / f"splits_{dataset.name}.json"
    splits.save(path)
    return path


def run_job(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    dataset, config, full, tiny = JOBS[name]
    data = Path(args.data_root) / dataset
    steps = args.steps
    fractions = {"f10": max(1, steps // 10), "f50": max(1, steps // 2)}
    overrides = [o.format(**fractions) for o in (tiny if args.tiny else full)]
    cfg = load_config(
        REPO / config,
        [
            f"data.path={data}",
            f"data.splits={splits_for(data, out)}",
            f"data.num_workers={args.workers}",
            f"train.steps={steps}",
            f"train.device={args.device}",
            "train.deterministic=false",
            f"train.checkpoint_every={steps}",
            f"val.every={steps}",
            "val.max_cases=1",
            "val.overlays=0",
            "tracking.enabled=false",
            f"tracking.run_name={name}",
            f"output={out / name}",
            *overrides,
            *args.set,
        ],
    )
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            result = train(cfg, progress=False)
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=50)
        cpu_table = prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=50
        )
        (Path(args.profile) / f"profile_{name}.txt").write_text(f"{table}\n\n{cpu_table}\n")
    else:
        result = train(cfg, progress=False)
    total = time.perf_counter() - start
    training = max(result.seconds - result.validation_seconds, 1e-9)
    return {
        "job": name,
        "patch": list(cfg.data.patch_size),
        "batch": cfg.data.batch_size,
        "steps": result.steps,
        "steps_per_s": round(result.steps / training, 2),
        "loader_wait": round(result.loader_seconds / training, 3),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        "val_dice": None if result.best_dice is None else round(result.best_dice, 4),
        "validation_s": round(result.validation_seconds, 1),
        "wall_s": round(total, 1),
    }


def ddp_check(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The supervised job under ``torchrun`` on every GPU (NCCL), 50 steps."""
    n = torch.cuda.device_count()
    data = Path(args.data_root) / "ACDC"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "-m", "medcl.cli", "train",
        str(REPO / "configs/acdc/supervised.yaml"), "--data", str(data), "--splits", str(splits_for(data, out)),
        "--runs", str(out / "ddp"), "--steps", "50", "--no-progress",
        "--set", "tracking.enabled=false", "--set", "val.every=50", "--set", "val.max_cases=1",
        "--set", f"data.num_workers={args.workers}",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return {
        "job": f"ddp_supervised_x{n}",
        "exit_code": proc.returncode,
        "wall_s": round(time.perf_counter() - start, 1),
        "tail": proc.stdout[-400:] + proc.stderr[-800:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument(
        "--prepare", metavar="DIR", help="copy a data subset to DIR (for the device) and exit"
    )
    parser.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    parser.add_argument("--steps", type=int, default=None, help="steps per job (default 200 on CUDA, 2 tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks and patches (CPU; the test suite)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--workers", type=int, default=None, help="loader workers (default 4 on CUDA, 0 on CPU)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every job"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    parser.add_argument("--profile", metavar="DIR", help="torch.profiler tables of each job into DIR")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(Path(args.data_root), Path(args.prepare))
        return 0
    args.steps = args.steps or (2 if args.tiny else 200)
    args.workers = args.workers if args.workers is not None else (4 if args.device == "cuda" else 0)
    device = torch.device(args.device)
    header = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "precision": resolve_precision("auto", device).name,
        "tiny": args.tiny,
    }
    print(json.dumps(header), flush=True)
    rows, failures = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.jobs:
            try:
                row = run_job(name, args, Path(tmp))
            except Exception as exc:  # report every job, then fail
                failures += 1
                row = {"job": name, "error": f"{type(exc).__name__}: {exc}"[:1000]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if device.type == "cuda" and torch.cuda.device_count() > 1:
            row = ddp_check(args, Path(tmp))
            failures += row["exit_code"] != 0
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({**header, "jobs": rows}, indent=1))
    print(f"{len(rows) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
