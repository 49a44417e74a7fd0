"""Training-step speed, measured side by side in one process on real batches.

Parts (``--parts``, default all):

* ``supervised2d`` / ``supervised3d``: medcl's full training loop (``Trainer.fit``: step-indexed sampling with
  augmentation in the training process, grad clipping, LR schedule, NaN checks, MLflow logging every 10 steps,
  ``last.pt`` every 100 steps) at ``train.precision=auto`` and at ``fp32``, against a bare fp32 MONAI loop of
  the same network (the MONAI ``BasicUNet`` itself, ``DiceCELoss``, the config's optimiser) on the same
  batches, pre-sampled so that the bare loop does no data loading at all. Configs:
  ``configs/hippocampus/supervised.yaml`` (Task04_Hippocampus, batch 16 x 64x64 slices) and
  ``configs/la2018/supervised.yaml`` (LA2018, batch 2; ``--patch3d`` sets the patch, default 64x64x48 so a
  CPU round takes minutes, the config's 112x112x80 on a GPU). Also: the bare loop under plain
  ``torch.autocast`` bf16 (the floor bf16 allows) and medcl with one loader worker process; with
  ``--bare-variants`` the bare bf16 loop with fused AdamW and compiled with ``torch.compile``.
* ``mcsc``: an MCSC step (forward + backward + AdamW + ``on_step_end``) of ``configs/hippocampus/mcsc.yaml``
  vs the same step with ``method.contrast_weight=0`` (cross teaching: no projector, no contrast), after the
  contrast warm-up, at the precision ``auto`` gives. Target: contrast <= 15% of the step.
* ``actionpp``: an ACTION++ stage-3 step of ``configs/hippocampus/actionpp.yaml`` vs the mean teacher
  (``anco.weight=0 saacl.weight=0``), at ``auto`` precision. Target: <= 1.5x the mean-teacher step.
* ``actionpp_acdc``: the same for the shipped ACDC CPU recipe ``configs/acdc/cpu/actionpp.yaml`` (8 + 8
  whole 128x128 slices of ACDC at 2 x 2 mm), with both representation heads (``method.rep_head`` stack and
  pyramid) and its mean teacher (``anco.weight=0 saacl.weight=0``, the ablation
  ``configs/acdc/cpu/mean_teacher.yaml`` is), timed on the same batches.
* ``configs``: any configs given with ``--configs A.yaml B.yaml ...`` (``--set`` overrides apply to each),
  each through ``Trainer.fit`` as ``medcl train`` runs it (sampling included, validation off), on its
  dataset (``--data``; by default the one its ``configs/<dataset>/`` folder names). Reports each config's
  s/step, its ratio to the first, and the steps that fit the first config's training time: what sizes a new
  recipe to an existing one's budget (e.g. ``--configs configs/acdc/cpu/fixmatch.yaml
  configs/acdc/cpu/fixmatch_fp.yaml``).

Variants of a part are interleaved for ``--rounds`` rounds (every variant once per round, in turn) and the
median seconds per step over rounds is reported with the ratios.

Run: ``.venv/bin/python benchmarks/bench_engine.py [--parts supervised2d mcsc ...] [--steps 30] [--rounds 3]
[--threads 2] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceCELoss
from monai.networks.nets.basic_unet import UpCat

from medcl.config import Config
from medcl.data.dataset import load_dataset
from medcl.data.sampling import TrainBatches, preprocess_volumes
from medcl.data.transforms import resolve_modality, volume_transforms
from medcl.engine.data_setup import data_spec
from medcl.engine.optim import build_optimizer, build_scheduler
from medcl.engine.trainer import Trainer, _to_device
from medcl.methods import build_method
from medcl.precision import resolve_precision, set_compute_dtype
from medcl.services.configs import load_config
from medcl.tracking.mlflow_tracking import MlflowTracker, resolve_store

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def setup(
    config: Path, data: Path, overrides: list[str], n_cases: int = 40
) -> tuple[Config, Any, TrainBatches]:
    """Config, data spec and the step-indexed batches of every stream of the config's method."""
    cfg = load_config(config, ["data.num_workers=0", *overrides])
    info = load_dataset(data)
    spec = data_spec(cfg, info)
    method = build_method(cfg, spec)
    modality = resolve_modality(cfg.data, info.modality)
    half = n_cases // 2
    ids = {
        "labeled": info.cases[:half],
        "unlabeled": info.cases[half:n_cases],
        "images": info.cases[:n_cases],
    }
    samplers = {}
    for index, (stream, with_label) in enumerate(method.streams.items()):
        vols = preprocess_volumes(
            ids[stream],
            volume_transforms(cfg.data, modality, with_label=with_label),
            with_label=with_label,
            progress=False,
        )
        sampler = method.build_sampler(stream, vols, stream_index=index)
        if sampler is not None:
            samplers[stream] = sampler
    return cfg, spec, TrainBatches(samplers, seed=cfg.train.seed)


def bare_monai_loop(
    cfg: Config,
    spec: Any,
    batches: list[dict],
    device: torch.device,
    dtype: torch.dtype | None = None,
    *,
    compiled: bool = False,
    fused: bool = False,
) -> float:
    """Seconds per step of a plain MONAI loop: network, DiceCELoss, optimiser; batches preloaded.

    ``dtype`` None is fp32; bf16 wraps the forward and loss in ``torch.autocast`` (the textbook way, for the
    floor of what bf16 can give). ``compiled``: ``nn.Module.compile`` (inductor) of the network, its
    decoder's no-op replicate padding switched off (the patch is a multiple of 16, so ``UpCat`` never pads;
    inductor cannot trace ``replication_pad2d_backward``); compilation happens in the untimed warm-up steps.
    ``fused``: AdamW (the supervised configs' optimiser) with ``fused=True`` (one kernel for all parameters
    instead of a loop)."""
    torch.manual_seed(0)
    net = build_method(cfg, spec).inference_network().net.to(device)  # the bare MONAI network
    if compiled:
        for module in net.modules():
            if isinstance(module, UpCat):
                module.is_pad = False
        net.compile()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    if fused:
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True
        )
    else:
        opt = build_optimizer([{"params": list(net.parameters())}], cfg.optim)
    data = [_to_device(b["labeled"], device) for b in batches]
    net.train()

    def step(b: dict) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(net(b["image"]), b["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in data[:2]:
        step(b)
    sync(device)
    start = time.perf_counter()
    for b in data:
        step(b)
    sync(device)
    return (time.perf_counter() - start) / len(data)


def engine_loop(cfg: Config, spec: Any, batches: TrainBatches, steps: int, out: Path, tag: str) -> float:
    """Seconds per step of ``Trainer.fit`` (sampling included) over ``steps`` steps after 2 warm-up steps."""
    torch.manual_seed(0)
    method = build_method(cfg, spec)
    uri, root = resolve_store(None, out)
    tracker = MlflowTracker(uri, root, "bench")
    tracker.start(run_name=tag)
    cfg = cfg.model_copy(deep=True)
    cfg.val.every = 10**9
    trainer = Trainer(cfg, method, spec, batches, [], out / tag, tracker=tracker, progress=False)
    trainer.cfg.train.steps = 2
    trainer.fit()  # warm-up: first kernels, first checkpoint
    trainer.cfg.train.steps = steps + 2
    sync(trainer.device)
    start = time.perf_counter()
    trainer.fit()
    sync(trainer.device)
    tracker.end()
    return (time.perf_counter() - start) / steps


def method_step_loop(
    cfg: Config, spec: Any, batches: list[dict], device: torch.device, start_step: int
) -> float:
    """Seconds per step of a method's step as the engine runs it (no data loading): forward, backward,
    optimiser, ``on_step_end``, at ``train.precision``."""
    torch.manual_seed(0)
    method = build_method(cfg, spec).to(device)
    set_compute_dtype(method, resolve_precision(cfg.train.precision, device).dtype)
    opt = build_optimizer(method.param_groups(), cfg.optim)
    sched = build_scheduler(opt, cfg.train.steps, cfg.optim)
    data = [_to_device(b, device) for b in batches]
    method.train()

    def step(i: int, b: dict) -> None:
        out = method(b, start_step + i)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        method.on_step_end(start_step + i)

    for i, b in enumerate(data[:2]):
        step(i, b)
    sync(device)
    start = time.perf_counter()
    for i, b in enumerate(data):
        step(i, b)
    sync(device)
    return (time.perf_counter() - start) / len(data)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleave(variants: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median seconds/step of each zero-argument variant over ``rounds`` interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(fn())
    return {name: statistics.median(t) for name, t in times.items()}


def supervised_part(name: str, args: argparse.Namespace, device: torch.device, out: Path) -> dict[str, Any]:
    if name == "supervised2d":
        config, data, extra = REPO / "configs/hippocampus/supervised.yaml", DATA / "Task04_Hippocampus", []
    else:
        config, data = REPO / "configs/la2018/supervised.yaml", DATA / "LA2018"
        extra = [f"data.patch_size=[{','.join(map(str, args.patch3d))}]"]
    common = [*extra, f"train.device={device.type}", "train.checkpoint_every=100", "train.log_every=10"]
    cfg, spec, batches = setup(config, data, common, n_cases=args.cases)
    fp32_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": "fp32"})})
    w1_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_workers": 1})})
    pre = [batches[s] for s in range(args.steps)]
    times = interleave(
        {
            "bare_monai_fp32": lambda: bare_monai_loop(cfg, spec, pre, device),
            "bare_monai_bf16": lambda: bare_monai_loop(cfg, spec, pre, device, torch.bfloat16),
            "medcl_fp32": lambda: engine_loop(fp32_cfg, spec, batches, args.steps, out, f"{name}-fp32"),
            "medcl_auto": lambda: engine_loop(cfg, spec, batches, args.steps, out, f"{name}-auto"),
            "medcl_auto_1_worker": lambda: engine_loop(w1_cfg, spec, batches, args.steps, out, f"{name}-w1"),
            **(
                {
                    "bare_monai_bf16_fused_adamw": lambda: bare_monai_loop(
                        cfg, spec, pre, device, torch.bfloat16, fused=True
                    ),
                    "bare_monai_bf16_compiled": lambda: bare_monai_loop(
                        cfg, spec, pre, device, torch.bfloat16, compiled=True
                    ),
                }
                if args.bare_variants
                else {}
            ),
        },
        args.rounds,
    )
    bare = times["bare_monai_fp32"]
    return {
        "protocol": f"{config.relative_to(REPO)} on {data.name}, patch {list(cfg.data.patch_size)}, "
        f"batch {cfg.data.batch_size}, {args.steps} steps x {args.rounds} rounds",
        "auto_precision": resolve_precision("auto", device).name,
        "s_per_step": {k: round(v, 4) for k, v in times.items()},
        "medcl_auto_vs_bare_fp32": round(times["medcl_auto"] / bare, 3),
        "medcl_fp32_vs_bare_fp32": round(times["medcl_fp32"] / bare, 3),
        "bare_bf16_vs_bare_fp32": round(times["bare_monai_bf16"] / bare, 3),
        "medcl_auto_1_worker_vs_bare_fp32": round(times["medcl_auto_1_worker"] / bare, 3),
        "target": "medcl_auto_vs_bare_fp32 <= 0.65",
        **{
            f"{k}_vs_bare_fp32": round(times[k] / bare, 3)
            for k in ("bare_monai_bf16_fused_adamw", "bare_monai_bf16_compiled")
            if k in times
        },
    }


def actionpp_acdc_part(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The shipped ACDC CPU ACTION++ recipe with each representation head vs its mean-teacher ablation."""
    config, data = REPO / "configs/acdc/cpu/actionpp.yaml", DATA / "ACDC"
    common = [f"train.device={device.type}", "data.cache=none"]
    cfg, spec, batches = setup(config, data, common, n_cases=args.cases)
    variants = {
        head: load_config(config, ["data.num_workers=0", *common, f"method.rep_head={head}"])
        for head in ("stack", "pyramid")
    }
    variants["mean_teacher"] = load_config(
        config, ["data.num_workers=0", *common, "method.anco.weight=0", "method.saacl.weight=0"]
    )
    pre = [batches[s] for s in range(args.steps)]
    times = interleave(
        {name: (lambda c=c: method_step_loop(c, spec, pre, device, 10)) for name, c in variants.items()},
        args.rounds,
    )
    base = times["mean_teacher"]
    return {
        "protocol": f"{config.relative_to(REPO)} on {data.name}, batch {cfg.data.batch_size} labeled + "
        f"{cfg.data.unlabeled_batch_size} unlabeled {list(cfg.data.patch_size)} slices, rep_scale "
        f"{cfg.method.rep_scale}, {args.steps} steps x {args.rounds} rounds, precision "
        f"{resolve_precision('auto', device).name}",
        "s_per_step": {k: round(v, 4) for k, v in times.items()},
        "stack_vs_mean_teacher": round(times["stack"] / base, 3),
        "pyramid_vs_mean_teacher": round(times["pyramid"] / base, 3),
        "target": "<= 1.5",
    }


def contrast_part(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    data = DATA / "Task04_Hippocampus"
    common = [f"train.device={device.type}"]
    if name == "mcsc":
        config = REPO / "configs/hippocampus/mcsc.yaml"
        baseline, label, start = ["method.contrast_weight=0"], "cross_teaching", 10**6  # past every warm-up
    else:
        config = REPO / "configs/hippocampus/actionpp.yaml"
        baseline, label, start = ["method.anco.weight=0", "method.saacl.weight=0"], "mean_teacher", 10
    cfg, spec, batches = setup(config, data, common, n_cases=args.cases)
    base_cfg = load_config(config, ["data.num_workers=0", *common, *baseline])
    if name == "mcsc":  # the whole schedule done: CPS and contrast at full weight on both streams
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 2 * start})})
        base_cfg = base_cfg.model_copy(
            update={"train": base_cfg.train.model_copy(update={"steps": 2 * start})}
        )
    pre = [batches[s] for s in range(args.steps)]
    times = interleave(
        {
            name: lambda: method_step_loop(cfg, spec, pre, device, start),
            label: lambda: method_step_loop(base_cfg, spec, pre, device, start),
        },
        args.rounds,
    )
    full, base = times[name], times[label]
    result: dict[str, Any] = {
        "protocol": f"{config.relative_to(REPO)} on {data.name}, batch {cfg.data.batch_size} labeled + "
        f"{cfg.data.unlabeled_batch_size} unlabeled {list(cfg.data.patch_size)} slices, "
        f"{args.steps} steps x {args.rounds} rounds, precision {resolve_precision('auto', device).name}",
        "s_per_step": {k: round(v, 4) for k, v in times.items()},
    }
    if name == "mcsc":
        result["contrast_share_of_step"] = round((full - base) / full, 3)
        result["target"] = "contrast_share_of_step <= 0.15"
    else:
        result["actionpp_vs_mean_teacher"] = round(full / base, 3)
        result["target"] = "actionpp_vs_mean_teacher <= 1.5"
    return result


def dataset_of(config: Path) -> Path:
    """The dataset a config is written for: a folder of its path (``configs/<dataset>/...``) names it."""
    folders = {"acdc": "ACDC", "hippocampus": "Task04_Hippocampus", "la2018": "LA2018"}
    for part in config.resolve().parent.parts:
        if part in folders:
            return DATA / folders[part]
    raise SystemExit(f"{config}: cannot tell its dataset from its folder; pass --data")


def configs_part(args: argparse.Namespace, device: torch.device, out: Path) -> dict[str, Any]:
    """``Trainer.fit`` steps of any configs side by side, and the steps each fits in the first's time."""
    if not args.configs:
        raise SystemExit("--parts configs needs --configs A.yaml [B.yaml ...]")
    common = [*args.set, f"train.device={device.type}", "train.checkpoint_every=100", "train.log_every=10"]
    loops = {}
    for index, config in enumerate(args.configs):
        data = Path(args.data) if args.data else dataset_of(Path(config))
        cfg, spec, batches = setup(Path(config), data, common, n_cases=args.cases)
        name = f"{index}:{Path(config).name}"
        loops[name] = (
            cfg,
            lambda cfg=cfg, spec=spec, b=batches, n=name: engine_loop(
                cfg, spec, b, args.steps, out, f"configs-{n.replace(':', '-')}"
            ),
        )
    times = interleave({name: fn for name, (_, fn) in loops.items()}, args.rounds)
    first = next(iter(loops))
    first_steps = loops[first][0].train.steps
    return {
        "protocol": f"Trainer.fit, validation off, {args.steps} steps x {args.rounds} rounds, "
        f"overrides {args.set}, precision {resolve_precision('auto', device).name}",
        "s_per_step": {k: round(v, 4) for k, v in times.items()},
        "vs_first": {k: round(v / times[first], 3) for k, v in times.items()},
        "steps_in_first_budget": {k: round(first_steps * times[first] / v) for k, v in times.items()},
        "configured_steps": {k: cfg.train.steps for k, (cfg, _) in loops.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parts = ["supervised2d", "supervised3d", "mcsc", "actionpp", "actionpp_acdc"]
    parser.add_argument("--parts", nargs="+", choices=[*parts, "configs"], default=parts)
    parser.add_argument("--configs", nargs="+", help="part configs: the configs to time side by side")
    parser.add_argument("--data", help="part configs: the dataset folder (default: from the configs' folder)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="part configs: override (repeatable)"
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cases", type=int, default=20, help="cases sampled from (labeled + unlabeled halves)"
    )
    parser.add_argument("--patch3d", type=int, nargs=3, default=[64, 64, 48])
    parser.add_argument(
        "--bare-variants",
        action="store_true",
        help="supervised parts: also the bare bf16 loop with fused AdamW and with torch.compile (slow warm-up)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report: dict[str, Any] = {
        "machine": f"{cpu_model()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts:
            if part.startswith("supervised"):
                report[part] = supervised_part(part, args, device, Path(tmp))
            elif part == "configs":
                report[part] = configs_part(args, device, Path(tmp))
            elif part == "actionpp_acdc":
                report[part] = actionpp_acdc_part(args, device)
            else:
                report[part] = contrast_part(part, args, device)
            print(json.dumps({part: report[part]}, indent=1), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
