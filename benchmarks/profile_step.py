"""Where a method's training step spends its time: ``torch.profiler`` over a few steps on a real batch.

Builds the config's method and batches exactly as ``bench_engine.py`` does (real Task04_Hippocampus or ACDC
slices through the method's own samplers), runs ``--warmup`` steps, then profiles ``--steps`` steps
(forward, backward, optimiser, ``on_step_end``) at the config's ``train.precision`` and prints the operators
with the most self CPU time, plus the share of the step spent outside the networks' forward/backward
(record_function ranges ``networks`` is not available generically, so look at the op table: copies, casts,
indexing, sort/topk and Python-side loops show up there).

Run: ``.venv/bin/python benchmarks/profile_step.py configs/hippocampus/actionpp.yaml [--set KEY=VALUE ...]
[--steps 5] [--rows 25] [--data ../shared/data/Task04_Hippocampus] [--start-step 10]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_engine import DATA, setup  # same batches and config loading as the speed benchmark
from torch.profiler import ProfilerActivity, profile, record_function

from medcl.engine.optim import build_optimizer
from medcl.engine.trainer import _to_device
from medcl.methods import build_method
from medcl.precision import resolve_precision, set_compute_dtype

# Self time of these operators is the networks' arithmetic; the rest is what the issue calls "not compute".
COMPUTE = ("convolution", "mkldnn_conv", "aten::mm", "aten::bmm", "aten::addmm", "aten::linear", "matmul",
           "scaled_dot_product", "_softmax_backward", "native_layer_norm")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data", default=str(DATA / "Task04_Hippocampus"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--start-step", type=int, default=10, help="step index of the first step (schedules)")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--sort", default="self_cpu_time_total")
    args = parser.parse_args()

    cfg, spec, batches = setup(Path(args.config), Path(args.data), args.set, n_cases=20)
    device = torch.device("cpu")
    torch.manual_seed(0)
    method = build_method(cfg, spec)
    precision = resolve_precision(cfg.train.precision, device)
    set_compute_dtype(method, precision.dtype)
    opt = build_optimizer(method.param_groups(), cfg.optim)
    data = [_to_device(batches[s], device) for s in range(args.warmup + args.steps)]
    method.train()

    def step(i: int) -> None:
        with record_function("forward"):
            out = method(data[i], args.start_step + i)
        opt.zero_grad(set_to_none=True)
        with record_function("backward"):
            out["loss"].backward()
        with record_function("optimizer"):
            opt.step()
        with record_function("on_step_end"):
            method.on_step_end(args.start_step + i)

    for i in range(args.warmup):
        step(i)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for i in range(args.warmup, args.warmup + args.steps):
            step(i)
    averages = prof.key_averages()
    print(
        f"{args.config} {' '.join(args.set)}  precision={precision.name}  threads={torch.get_num_threads()}"
    )
    print(averages.table(sort_by=args.sort, row_limit=args.rows, max_name_column_width=60))
    total = sum(e.self_cpu_time_total for e in averages)
    compute = sum(e.self_cpu_time_total for e in averages if any(k in e.key for k in COMPUTE))
    copies = sum(e.self_cpu_time_total for e in averages if e.key in ("aten::copy_", "aten::_to_copy"))
    print(
        f"step {total / args.steps / 1e6:.4f} s (profiled); convolution/matmul/attention kernels "
        f"{compute / total:.1%}, copies and casts {copies / total:.1%}, everything else {1 - (compute + copies) / total:.1%}"
    )


if __name__ == "__main__":
    main()
