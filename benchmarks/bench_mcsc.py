"""MCSC cost: step time with vs without the contrast, and the contrast's memory vs a naive all-pairs version.

1. **Step time.** Two MCSC methods built from the same config on the same real ACDC batch (labeled +
   unlabeled slices), one with ``method.contrast_weight`` > 0 (projectors + multi-scale contrast) and one
   with 0 (cross teaching only: plain forwards, no projector). Each timed step is forward + backward +
   AdamW step, after the contrast warm-up (unlabeled pixels included). The two are interleaved for
   ``--rounds`` rounds of ``--steps`` steps, and the median seconds/step of each and their ratio are printed.
2. **Loss memory and time.** The contrast kernel (:func:`grouped_supcon_loss` on block groups) against a
   naive version that, for every group, materialises the positive mask, the per-pair class-count weights,
   the logits, their exp and the log-probabilities as P x P float tensors, and a single all-pairs version on
   every pixel at once; each naive version runs only where its estimated memory (about 8 float P x P tensors
   per group) stays below ``--max-naive-gib``, and the estimate is printed either way. Each runs in a fresh
   subprocess started with ``MALLOC_MMAP_THRESHOLD_=65536``; peak extra memory is VmHWM − VmRSS around one
   forward + backward (as in ``bench_losses.py``), time the median of ``--repeats``.

CPU, float32, ``--threads`` torch threads. Default sizes: step time on 2+2 ACDC slices at 128x128 with the
configs' networks (BasicUNet [16..256], SwinUNETR feature_size 24); loss at 2 views x 4 images of 224x224,
128-d embeddings, blocks of 16 (the ACDC config's fine scale).

Run: ``.venv/bin/python benchmarks/bench_mcsc.py [--data ../shared/data/ACDC] [--patch 128] [--steps 4]
[--rounds 3] [--variant block_size=8,projector_dim=64 ...] [--loss-size 224] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def naive_group_loss(z: torch.Tensor, y: torch.Tensor, tau: float, eps: float = 1e-6) -> torch.Tensor:
    """The textbook SupCon form of the same loss on one group, with P x P float masks (as in [1])."""
    z = F.normalize(z, dim=1)  # (P, D)
    p = z.shape[0]
    same = (y[:, None] == y[None, :]).float()  # (P, P)
    not_self = 1.0 - torch.eye(p)  # (P, P)
    positive = same * not_self  # (P, P)
    count = torch.bincount(y).float()[y]  # (P,): N_{y_a}
    weights = 1.0 / (count[None, :] - same).clamp(min=1)  # (P, P): 1 / (N_{y_a} - 1[y_a = y_i])
    logits = z @ z.T / tau  # (P, P)
    denom = (torch.exp(logits) * weights * not_self).sum(1, keepdim=True)  # (P, 1)
    log_prob = logits - torch.log(denom + eps)  # (P, P)
    n_pos = positive.sum(1)
    keep = n_pos > 0
    mean_log_prob = (positive * log_prob).sum(1)[keep] / n_pos[keep]
    return -mean_log_prob.mean()


def loss_case(kind: str, size: int, images: int, block: int, dim: int, repeats: int) -> dict:
    """Run in a subprocess: peak extra memory (MiB) and median seconds of one forward + backward."""
    from medcl.losses.mcsc_contrast import block_groups, gather_labels, grouped_supcon_loss

    torch.manual_seed(0)
    views, k = 2, 4
    labels = torch.randint(0, k, (views, images, size, size))
    z_maps = torch.randn(views, images, dim, size, size)

    def run() -> float:
        z = z_maps.clone().requires_grad_()
        if kind == "all-pairs":
            flat = z.permute(0, 1, 3, 4, 2).reshape(-1, dim)
            loss = naive_group_loss(flat, labels.reshape(-1), 0.1)
        else:
            torch.manual_seed(1)
            index, valid = block_groups(labels, block)  # (G, V, Q)
            zz = torch.cat(
                [
                    z[v]
                    .reshape(images, dim, -1)
                    .transpose(0, 1)
                    .reshape(dim, -1)[:, index[:, v].reshape(-1)]
                    .reshape(dim, *index[:, v].shape)
                    .permute(1, 2, 0)
                    for v in range(views)
                ],
                1,
            )  # (G, P, D)
            lab = gather_labels(labels.flatten(1), index).flatten(1)
            if kind == "medcl":
                loss = grouped_supcon_loss(zz, lab, valid.flatten(1), 0.1, k)
            else:  # naive, one group at a time (the authors' loop over blocks)
                loss = torch.stack([naive_group_loss(zz[g], lab[g], 0.1) for g in range(zz.shape[0])]).mean()
        loss.backward()
        return float(loss.detach())

    value = run()  # warm-up
    rss = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    run()
    peak = _status("VmHWM") - rss
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {
        "kind": kind,
        "peak_mib": round(peak, 1),
        "seconds": round(statistics.median(times), 3),
        "loss": value,
    }


def _status(key: str) -> float:
    """A VmRSS/VmHWM entry of /proc/self/status in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def step_times(args: argparse.Namespace) -> dict:
    """Interleaved seconds/step of MCSC with and without the contrast on one real ACDC batch."""
    from medcl.data.dataset import load_dataset
    from medcl.data.sampling import StepSampler, preprocess_volumes
    from medcl.data.transforms import sample_transforms, volume_transforms
    from medcl.engine.data_setup import data_spec
    from medcl.engine.optim import build_optimizer
    from medcl.methods import build_method
    from medcl.services.configs import load_config

    overrides = [
        f"data.patch_size=[{args.patch}, {args.patch}]",
        f"method.transformer.feature_size={args.feature_size}",
        f"method.block_size={args.block}",
        f"method.coarse_block_size={args.coarse_block}",
        f"method.projector_hidden={args.hidden}",
        f"method.projector_dim={args.dim}",
        f"method.sampler={args.sampler}",
        "method.contrast_warmup_steps=0",
        *args.set,
    ]
    cfg = load_config(REPO / "configs" / "acdc" / "mcsc.yaml", overrides)
    info = load_dataset(args.data)
    spec = data_spec(cfg, info)
    vols = {}
    for name, cases, with_label in (("labeled", info.cases[:3], True), ("unlabeled", info.cases[3:6], False)):
        vols[name] = preprocess_volumes(
            cases,
            volume_transforms(cfg.data, spec.modality, with_label=with_label),
            with_label=with_label,
            progress=False,
        )
    patch = cfg.data.patch_size
    batch = {
        "labeled": StepSampler(
            vols["labeled"], sample_transforms(None, patch, with_label=True), args.batch
        ).sample(0, 0, 0),
        "unlabeled": StepSampler(
            vols["unlabeled"], sample_transforms(None, patch, with_label=False), args.batch, stream=1
        ).sample(0, 0, 0),
    }
    methods = {}
    variants = [("cross_teaching", {"contrast_weight": 0.0})]
    for spec_text in args.variant or [""]:
        # "block_size=8,projector_dim=64" -> method overrides of one contrast variant
        extra = dict(item.split("=", 1) for item in spec_text.split(",") if item)
        name = "mcsc" + "".join(f" {k}={v}" for k, v in extra.items())
        parsed = {k: (v if k == "sampler" else int(v)) for k, v in extra.items()}
        variants.append((name, {"contrast_weight": cfg.method.contrast_weight or 0.002, **parsed}))
    for name, method_overrides in variants:
        c = cfg.model_copy(deep=True)
        c.method = cfg.method.model_copy(update=method_overrides)
        torch.manual_seed(0)
        m = build_method(c, spec)
        m.train()
        methods[name] = (m, build_optimizer(m.param_groups(), c.optim))

    def run(name: str, steps: int) -> float:
        m, opt = methods[name]
        start = time.perf_counter()
        for i in range(steps):
            out = m(batch, 100 + i)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
        return (time.perf_counter() - start) / steps

    for name in methods:
        run(name, 1)  # warm-up
    rounds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name in methods:
            rounds[name].append(run(name, args.steps))
    med = {name: statistics.median(v) for name, v in rounds.items()}
    base = med["cross_teaching"]
    return {
        "patch": args.patch,
        "batch": f"{args.batch}+{args.batch}",
        "seconds_per_step": {k: round(v, 3) for k, v in med.items()},
        "rounds": {k: [round(x, 3) for x in v] for k, v in rounds.items()},
        "contrast_overhead": {k: round(v / base - 1, 3) for k, v in med.items() if k != "cross_teaching"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ACDC"), help="ACDC folder.")
    parser.add_argument(
        "--patch", type=int, default=128, help="Slice size of the step-time test (multiple of 32)."
    )
    parser.add_argument("--batch", type=int, default=2, help="Labeled (= unlabeled) slices per step.")
    parser.add_argument("--feature-size", type=int, default=24, help="SwinUNETR feature_size.")
    parser.add_argument("--block", type=int, default=16, help="Fine block size.")
    parser.add_argument("--coarse-block", type=int, default=14, help="Coarse block size.")
    parser.add_argument("--hidden", type=int, default=256, help="Projector hidden width.")
    parser.add_argument("--dim", type=int, default=128, help="Projector output size.")
    parser.add_argument("--sampler", default="block", choices=["block", "random"])
    parser.add_argument(
        "--variant",
        action="append",
        help="A contrast variant as method overrides, e.g. 'block_size=8,projector_dim=64' (repeatable; "
        "default: the flags above). All variants and cross teaching are interleaved in every round.",
    )
    parser.add_argument("--set", action="append", default=[], help="Extra config override (repeatable).")
    parser.add_argument("--steps", type=int, default=4, help="Timed steps per round.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (median reported).")
    parser.add_argument("--loss-size", type=int, default=224, help="Map side of the loss memory test.")
    parser.add_argument("--loss-images", type=int, default=4, help="Images per view in the loss test.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed loss runs (median).")
    parser.add_argument(
        "--max-naive-gib",
        type=float,
        default=6.0,
        help="Run a naive version only below this estimated memory.",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument("--skip-step", action="store_true", help="Only the loss test.")
    parser.add_argument("--skip-loss", action="store_true", help="Only the step-time test.")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one loss case in a subprocess
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.case:
        print(
            json.dumps(
                loss_case(args.case, args.loss_size, args.loss_images, args.block, args.dim, args.repeats)
            )
        )
        return
    report: dict = {"threads": args.threads}
    if not args.skip_step:
        report["step"] = step_times(args)
        print(json.dumps(report["step"]), flush=True)
    if not args.skip_loss:
        n_pixels = 2 * args.loss_images * args.loss_size**2
        # Naive memory: about 8 float P x P tensors kept per group (masks, weights, logits, exp, log-probs).
        per_side = max(1, args.loss_size // args.block)
        group = 2 * args.loss_images * (args.loss_size / per_side) ** 2
        naive_gib = 8 * per_side**2 * group**2 * 4 / 2**30
        kinds = ["medcl"]
        kinds += ["naive-blocks"] if naive_gib < args.max_naive_gib else []
        kinds += ["all-pairs"] if 8 * n_pixels**2 * 4 / 2**30 < args.max_naive_gib else []
        cases = []
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        for kind in kinds:
            cmd = [sys.executable, __file__, "--case", kind, *sys.argv[1:]]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            cases.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(cases[-1]), flush=True)
        base = cases[0]
        report["loss"] = {
            "size": f"2 views x {args.loss_images} x {args.loss_size}^2, D={args.dim}, block {args.block}",
            "naive_blocks_estimate_gib": round(naive_gib, 1),
            "all_pairs_estimate_gib": round(8 * n_pixels**2 * 4 / 2**30, 1),
            "cases": cases,
            "ratios_vs_medcl": {
                c["kind"]: {
                    "memory": round(c["peak_mib"] / max(base["peak_mib"], 0.25), 2),
                    "time": round(c["seconds"] / base["seconds"], 2),
                }
                for c in cases[1:]
            },
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
