"""Training-loop overhead: medcl's engine + loaders vs a bare loop of the same model and batch.

Both loops run the supervised 2D BasicUNet of ``configs/hippocampus/supervised.yaml`` (batch 16, 64x64 slices)
on CPU in the same process. The engine loop is ``Trainer.fit`` (step-indexed sampling with augmentation in a
loader worker, AMP/grad clipping/LR schedule, MLflow logging every 10 steps, periodic last.pt checkpoints).
The bare loop feeds one pre-sampled batch to forward/backward/clip/step with no data loading at all. The two
are interleaved (bare, engine, bare, engine) and the median of the rounds is reported.

Run: ``.venv/bin/python benchmarks/bench_engine.py [--steps 60] [--rounds 2] [--data ../shared/data/Task04_Hippocampus]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from medcl.config import load_config
from medcl.data.dataset import load_dataset
from medcl.data.sampling import StepSampler, TrainBatches, preprocess_volumes
from medcl.data.transforms import batch_transforms, resolve_modality, sample_transforms, volume_transforms
from medcl.engine.checkpoint import save_checkpoint
from medcl.engine.optim import build_optimizer, build_scheduler
from medcl.engine.run import data_spec
from medcl.engine.trainer import Trainer
from medcl.methods import build_method
from medcl.tracking.mlflow_tracking import MlflowTracker, resolve_store

REPO = Path(__file__).resolve().parents[1]


def bare_loop(method, batch, cfg, steps: int) -> float:
    """Seconds per step of forward/backward/clip/step on one fixed batch."""
    opt = build_optimizer(method.param_groups(), cfg.optim)
    sched = build_scheduler(opt, cfg.train.steps, cfg.optim)
    method.train()
    for i in range(3):  # warm-up
        loss = method(batch, i)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    start = time.perf_counter()
    for i in range(steps):
        loss = method(batch, i)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
    return (time.perf_counter() - start) / steps


def engine_loop(cfg, spec, sampler, steps: int, out: Path, tag: str) -> float:
    """Seconds per step of ``Trainer.fit`` over ``steps`` steps (after 3 warm-up steps)."""
    method = build_method(cfg, spec)
    uri, root = resolve_store(None, out)
    tracker = MlflowTracker(uri, root, "bench")
    tracker.start(run_name=f"engine-{tag}")
    batches = TrainBatches({"labeled": sampler}, seed=cfg.train.seed)
    cfg = cfg.model_copy(deep=True)
    cfg.train.steps = steps + 3
    trainer = Trainer(cfg, method, spec, batches, [], out / tag, tracker=tracker, progress=False)
    trainer.cfg.train.steps = 3
    trainer.fit()  # warm-up: worker start, first checkpoint
    trainer.cfg.train.steps = steps + 3
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    tracker.end()
    return seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "Task04_Hippocampus"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--workers", type=int, default=0, help="data.num_workers (default 0, the config default)"
    )
    args = parser.parse_args()

    cfg = load_config(
        REPO / "configs" / "hippocampus" / "supervised.yaml", [f"data.num_workers={args.workers}"]
    )
    info = load_dataset(args.data)
    spec = data_spec(cfg, info)
    cases = info.cases[:40]
    vols = preprocess_volumes(
        cases,
        volume_transforms(cfg.data, resolve_modality(cfg.data, info.modality), with_label=True),
        with_label=True,
        progress=False,
    )
    sampler = StepSampler(
        vols,
        sample_transforms(cfg.data.augment, cfg.data.patch_size, with_label=True),
        cfg.data.batch_size,
        batch_transform=batch_transforms(cfg.data.augment),
    )
    torch.manual_seed(0)
    method = build_method(cfg, spec)
    batch = {"labeled": sampler.sample(0, 0, 0)}

    bare, engine = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            bare.append(bare_loop(method, batch, cfg, args.steps))
            engine.append(engine_loop(cfg, spec, sampler, args.steps, Path(tmp), f"r{r}"))
        save_checkpoint({"x": torch.zeros(1)}, Path(tmp) / "probe.pt")
    b, e = statistics.median(bare), statistics.median(engine)
    result = {
        "protocol": "Task04_Hippocampus, 40 cases, 2D BasicUNet features [16,16,32,64,128,16], batch 16x1x64x64, "
        f"CPU threads={torch.get_num_threads()}, loader workers={args.workers}, {args.steps} steps x {args.rounds} rounds",
        "bare_s_per_step": round(b, 4),
        "engine_s_per_step": round(e, 4),
        "bare_steps_per_s": round(1 / b, 3),
        "engine_steps_per_s": round(1 / e, 3),
        "engine_overhead": f"{(e / b - 1) * 100:+.1f}%",
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
