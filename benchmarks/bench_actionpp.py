"""ACTION++ stage 3 vs ACTION vs a plain mean teacher vs supervised: step time and peak memory, side by side.

All variants are the ``actionpp`` method of ``configs/acdc/actionpp.yaml`` (or the supervised method), built
in one process on the same real ACDC batch (``--batch`` labeled + ``--batch`` unlabeled slices of
``--patch`` x ``--patch``, sampled once from the first cases of the dataset):

* ``actionpp``: pseudo-labels + AnCo + SAACL (queue), ATS temperatures;
* ``action``: ``saacl.weight=0``, constant temperature;
* ``mean_teacher``: ``anco.weight=0``, ``saacl.weight=0`` (no representation head at all);
* ``supervised``: Dice + CE on the labeled slices only (the lower bound of the comparison).

A step is the training step as the engine runs it: forward, backward, SGD step, ``on_step_end`` (EMA,
queues). Rounds are interleaved (every variant once per round, in turn) and the median seconds per step over
rounds is reported, with each variant's ratio to the mean teacher. Peak memory: on CPU, the growth of the
resident set during one step after resetting the high-water mark (``/proc/self/clear_refs``; the script
re-executes itself with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed buffers leave the resident set); on
CUDA, ``torch.cuda.max_memory_allocated`` over one step minus the memory held before it.

Run: ``.venv/bin/python benchmarks/bench_actionpp.py [--patch 128] [--batch 4] [--rounds 3] [--steps 3]
[--threads 2] [--queries 256 --negatives 512] [--rep-scale 1] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from medcl.data.dataset import load_dataset
from medcl.data.sampling import preprocess_volumes
from medcl.data.transforms import resolve_modality, volume_transforms
from medcl.engine.data_setup import data_spec
from medcl.methods import build_method
from medcl.services.configs import load_config

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "actionpp": [],
    "action": ["method.saacl.weight=0", "method.schedule.kind=constant"],
    "mean_teacher": ["method.anco.weight=0", "method.saacl.weight=0"],
    "supervised": ["method={name: supervised}"],
}


def memory_kib(field: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def one_step(method, opt, batch, step: int) -> None:
    """Forward, backward, SGD step, EMA/queue update: what ``Trainer._train_step`` does."""
    out = method(batch, step)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    method.on_step_end(step)


def peak_mib(method, opt, batch, step: int, device: torch.device) -> float:
    """Extra memory held at the peak of one step (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        one_step(method, opt, batch, step)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = memory_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current resident size
    one_step(method, opt, batch, step)
    return (memory_kib("VmHWM") - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ACDC"))
    parser.add_argument("--patch", type=int, default=128, help="slice size (config: 256)")
    parser.add_argument("--batch", type=int, default=4, help="labeled and unlabeled slices per step (4 + 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=256, help="anco.num_queries / saacl.anchors_per_class")
    parser.add_argument("--negatives", type=int, default=512, help="anco.num_negatives")
    parser.add_argument("--rep-scale", type=int, default=1, help="method.rep_scale")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.device == "cpu" and os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    common = [
        f"data.patch_size=[{args.patch}, {args.patch}]",
        f"data.batch_size={args.batch}",
        f"data.unlabeled_batch_size={args.batch}",
        f"method.anco.num_queries={args.queries}",
        f"method.anco.num_negatives={args.negatives}",
        f"method.saacl.anchors_per_class={args.queries}",
        f"method.rep_scale={args.rep_scale}",
    ]
    info = load_dataset(args.data)
    tmp = tempfile.mkdtemp(prefix="bench_actionpp_")
    cfgs = {}
    for name in args.variants:
        extra = VARIANTS[name]
        over = [*common, f"output={tmp}", *extra]
        if name == "supervised":  # the supervised method has no method.anco/saacl/rep_scale keys
            over = [o for o in over if not o.startswith("method.")]
        cfgs[name] = load_config(REPO / "configs" / "acdc" / "actionpp.yaml", over)
    first = cfgs[args.variants[0]]
    modality = resolve_modality(first.data, info.modality)
    lab = preprocess_volumes(
        info.cases[:6],
        volume_transforms(first.data, modality, with_label=True),
        with_label=True,
        progress=False,
    )
    unl = preprocess_volumes(
        info.cases[6:12],
        volume_transforms(first.data, modality, with_label=False),
        with_label=False,
        progress=False,
    )

    methods, opts, batches = {}, {}, {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        method = build_method(cfg, data_spec(cfg, info)).to(device).train()
        samplers = {"labeled": method.build_sampler("labeled", lab, stream_index=0)}
        if "unlabeled" in method.streams:
            samplers["unlabeled"] = method.build_sampler("unlabeled", unl, stream_index=1)
        batch = {k: s.sample(0, 0, 0) for k, s in samplers.items()}  # the same draw for every variant
        batches[name] = {k: {t: v.to(device) for t, v in b.items()} for k, b in batch.items()}
        methods[name] = method
        opts[name] = torch.optim.SGD(method.param_groups()[0]["params"], lr=0.01, momentum=0.9, nesterov=True)
        for step in range(2):  # warm-up (allocator, oneDNN primitives, queues)
            one_step(method, opts[name], batches[name], step)

    times: dict[str, list[float]] = {name: [] for name in methods}
    step = 2
    for _ in range(args.rounds):
        for name, method in methods.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                one_step(method, opts[name], batches[name], step)
                step += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / args.steps)
    peaks = {name: peak_mib(methods[name], opts[name], batches[name], step, device) for name in methods}

    ref = statistics.median(times["mean_teacher"]) if "mean_teacher" in times else None
    rows = {}
    for name in methods:
        med = statistics.median(times[name])
        rows[name] = {
            "s_per_step": round(med, 4),
            "vs_mean_teacher": round(med / ref, 2) if ref else None,
            "peak_mib": round(peaks[name], 1),
            "rounds_s": [round(t, 4) for t in times[name]],
        }
    result = {
        "protocol": f"ACDC, {args.batch} labeled + {args.batch} unlabeled slices {args.patch}x{args.patch}, BasicUNet "
        f"[16,32,64,128,256,16], rep_dim 128, rep_scale {args.rep_scale}, queries {args.queries}, negatives "
        f"{args.negatives}, SAACL queue 12288; device {args.device}, threads {torch.get_num_threads()}; "
        f"{args.steps} steps x {args.rounds} interleaved rounds after 2 warm-up steps, median",
        **rows,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
