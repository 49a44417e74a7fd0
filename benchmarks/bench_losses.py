"""Contrastive losses: medcl's kernels vs straightforward references, time and peak memory.

Variants (the paper's sizes):

* global: G^R, G^{D-}, G^D on 48 and 144 images x 128-d embeddings (volumes x 4 partitions x 2 views);
* local: L^R on two views of 12 slices, 64-channel 48x48 maps, 3x3 windows, 128-d shared linear embedding,
  with the grid13 layout (5-neighbour negatives, the authors' setting, and all-region negatives) and with
  every window of the stride-3 tiling (256 regions, all-region negatives).

* anco: ACTION's AnCo at the ACDC CPU recipe's size (16 slices of 64x64 representations, 128-d, 4 classes,
  256 queries, 512 negatives) with the negatives as similarities to a shared pool (medcl) vs the reference's
  layout, each query's negatives gathered as a ``(V, Q, M, D)`` tensor (``gather_anco``), on the same draws.

The loop references compute the same numbers the way the authors' TensorFlow code does: one anchor and one
positive pair at a time, exp / sum / log by hand (the negatives of an anchor in one matrix-vector product);
the local one also extracts and embeds each window separately. They are the slow references of
``tests/losses`` made differentiable, so that forward + backward can be timed.

Protocol: every (variant, implementation) runs in a fresh subprocess started with
``MALLOC_MMAP_THRESHOLD_=65536`` (large buffers go back to the OS when freed, so resident memory falls back
after a step). In it: build the inputs, run one warm-up forward+backward, read VmRSS, reset the peak
(``/proc/self/clear_refs`` 5), run one forward+backward, and report VmHWM − VmRSS as the step's peak extra
memory; then time ``--repeats`` forward+backward steps (``--slow-repeats`` for the loops) and report the
median. CPU, float32, ``--threads`` torch threads (default 1). The JSON also gives the absolute difference
between the two losses, to show that both compute the same value.

Run: ``.venv/bin/python benchmarks/bench_losses.py [--repeats 15] [--slow-repeats 3] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from medcl.losses.anatomical import _prototypes, anco_loss_from_samples, sample_anco
from medcl.losses.global_contrast import GlobalContrastiveLoss
from medcl.losses.local_contrast import LocalContrastiveLoss
from medcl.models.heads import RegionProjectionHead

TAU = 0.1
GLOBAL_VARIANTS = [f"global-{s}-{n}" for n in (48, 144) for s in ("GR", "GD-", "GD")]
LOCAL_VARIANTS = ["local-grid13-neighbours5", "local-grid13-all", "local-all-all"]
ANCO_VARIANTS = ["anco-acdc"]
RESOLUTION_MIB = 0.25  # peaks below this are allocator noise (4 KiB pages, small blocks from resident arenas)


def loop_global_loss(z, slice_ids, partition_ids, volume_ids, strategy: str) -> torch.Tensor:
    """Per-anchor, per-pair global loss: Λ⁺ / Λ⁻ from the definitions, Eq. 1 with exp and log by hand."""
    zn = F.normalize(z, dim=1)  # (N, D)
    s, p, v = slice_ids.tolist(), partition_ids.tolist(), volume_ids.tolist()
    n = len(s)
    total = z.new_zeros(())
    for i in range(n):
        negatives = [k for k in range(n) if (s[i] != s[k] if strategy == "GR" else p[i] != p[k])]
        negative_sum = torch.exp(zn[negatives] @ zn[i] / TAU).sum()
        for j in range(n):
            across_volumes = strategy == "GD" and p[i] == p[j] and v[i] != v[j]
            if j != i and (s[i] == s[j] or across_volumes):
                numerator = torch.exp(zn[i] @ zn[j] / TAU)
                total = total - torch.log(numerator / (numerator + negative_sum))
    return total / n


def loop_local_loss(f1, f2, weight, positions, negative_sets) -> torch.Tensor:
    """Per-window embedding, per-anchor L^R loss with exp and log by hand; map m = view·B + image."""
    b, k = f1.shape[0], 3
    maps = [f1[i] for i in range(b)] + [f2[i] for i in range(b)]
    emb = [
        [F.normalize(F.linear(fm[:, y : y + k, x : x + k].reshape(-1), weight), dim=0) for y, x in positions]
        for fm in maps
    ]
    r = len(positions)
    per_image = [torch.stack(emb[i] + emb[i + b]) for i in range(b)]  # (2R, D) each
    total = f1.new_zeros(())
    for m in range(2 * b):
        image, other = m % b, (m + b) % (2 * b)
        for u in range(r):
            anchor = emb[m][u]
            rows = list(negative_sets[u]) + [r + w for w in negative_sets[u]]
            negative_sum = torch.exp(per_image[image][rows] @ anchor / TAU).sum()
            numerator = torch.exp(anchor @ emb[other][u] / TAU)
            total = total - torch.log(numerator / (numerator + negative_sum))
    return total / (r * 2 * b)


def gather_anco(rep, labels, samples, tau) -> torch.Tensor:
    """AnCo with every query's negatives gathered as a ``(V, Q, M, D)`` tensor (the reference's layout)."""
    use = samples.has_queries
    protos, _ = _prototypes(rep, labels, int(labels.max()) + 1)  # the same positives as medcl's
    positive = F.normalize(protos[samples.classes[use]], dim=1)  # (V, D)
    rep_n = F.normalize(rep, dim=1)  # (N, D)
    queries = rep_n[samples.query_index[use]]  # (V, Q, D)
    negatives = rep_n.detach()[samples.negative_index[use]]  # (V, Q, M, D)
    l_pos = torch.einsum("vqd,vd->vq", queries, positive).unsqueeze(-1)
    l_neg = torch.einsum("vqd,vqmd->vqm", queries, negatives)
    logits = torch.cat([l_pos, l_neg], dim=-1) / tau
    return F.cross_entropy(
        logits.flatten(0, 1), torch.zeros(logits.shape[0] * logits.shape[1], dtype=torch.long)
    )


def build(variant: str, impl: str) -> tuple[Callable[[], torch.Tensor], list[torch.Tensor]]:
    """The loss closure of one (variant, implementation) and the tensors whose gradients it fills."""
    g = torch.Generator().manual_seed(0)
    if variant.startswith("anco"):
        n = 16 * 64 * 64
        labels = torch.randint(0, 4, (n,), generator=g)
        rep = (torch.randn(4, 128, generator=g)[labels] + torch.randn(n, 128, generator=g)).requires_grad_()
        samples = sample_anco(rep, labels, torch.rand(n, generator=g), 4, tau=0.5, generator=g)
        if impl == "vectorised":
            return (lambda: anco_loss_from_samples(rep, labels, samples, 4, 0.5)), [rep]
        return (lambda: gather_anco(rep, labels, samples, 0.5)), [rep]
    if variant.startswith("global"):
        strategy, size = variant.removeprefix("global-").rsplit("-", 1)  # "GD-", "48" from "global-GD--48"
        n = int(size)
        slice_ids = torch.arange(n // 2).repeat_interleave(2)  # (N,): 2 views per slice
        partition_ids, volume_ids = slice_ids % 4, slice_ids // 4  # 4 partitions per volume
        z = torch.randn(n, 128, generator=g).requires_grad_()
        if impl == "vectorised":
            loss_fn = GlobalContrastiveLoss(strategy, TAU)
            return (lambda: loss_fn(z, slice_ids, partition_ids, volume_ids)), [z]
        return (lambda: loop_global_loss(z, slice_ids, partition_ids, volume_ids, strategy)), [z]

    _, layout, negatives = variant.split("-")
    torch.manual_seed(0)
    loss_fn = LocalContrastiveLoss(TAU, 3, layout, negatives)
    head = RegionProjectionHead(64, region_size=3, out=128)
    f1 = torch.randn(12, 64, 48, 48, generator=g).requires_grad_()
    f2 = (f1.detach() + 0.3 * torch.randn(12, 64, 48, 48, generator=g)).requires_grad_()
    leaves = [f1, f2, head.linear.weight]
    if impl == "vectorised":
        return (lambda: loss_fn(f1, f2, embed=head)), leaves
    positions = [tuple(p) for p in loss_fn.region_positions((48, 48)).tolist()]
    neighbours = loss_fn.negative_regions(torch.tensor(positions))
    negative_sets = [row.nonzero().flatten().tolist() for row in neighbours]
    return (lambda: loop_local_loss(f1, f2, head.linear.weight, positions, negative_sets)), leaves


def memory_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


def worker(variant: str, impl: str, repeats: int) -> dict:
    loss_fn, leaves = build(variant, impl)

    def step() -> float:
        for leaf in leaves:
            leaf.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.item()

    step()  # warm-up
    for leaf in leaves:  # the warm-up's gradients are freed before the baseline, not inside the measured step
        leaf.grad = None
    before = memory_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current resident size
    value = step()
    peak_mib = (memory_kib("VmHWM") - before) / 1024
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return {
        "loss": value,
        "median_ms": statistics.median(times),
        "peak_extra_mib": peak_mib,
        "repeats": repeats,
    }


def run_in_subprocess(variant: str, impl: str, repeats: int, threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        impl,
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed steps of the vectorised losses")
    parser.add_argument("--slow-repeats", type=int, default=3, help="timed steps of the loop references")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in each subprocess")
    parser.add_argument("--only", nargs="*", help="run only these variants")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats)))
        return

    results = {}
    for variant in args.only or GLOBAL_VARIANTS + LOCAL_VARIANTS + ANCO_VARIANTS:
        fast = run_in_subprocess(variant, "vectorised", args.repeats, args.threads)
        slow = run_in_subprocess(variant, "loop", args.slow_repeats, args.threads)
        results[variant] = {
            "vectorised_ms": round(fast["median_ms"], 3),
            "loop_ms": round(slow["median_ms"], 2),
            "speedup": round(slow["median_ms"] / fast["median_ms"], 1),
            "vectorised_peak_mib": round(fast["peak_extra_mib"], 2),
            "loop_peak_mib": round(slow["peak_extra_mib"], 2),
            "memory_ratio_loop_over_vectorised": (
                round(slow["peak_extra_mib"] / fast["peak_extra_mib"], 1)
                if fast["peak_extra_mib"] >= RESOLUTION_MIB
                else None  # below what resident-memory pages can resolve
            ),
            "loss": round(fast["loss"], 6),
            "abs_loss_difference": float(f"{abs(fast['loss'] - slow['loss']):.2e}"),
        }
    report = {
        "protocol": (
            f"CPU float32, torch {torch.__version__}, {args.threads} thread(s); one fresh subprocess per "
            "variant and implementation (MALLOC_MMAP_THRESHOLD_=65536); forward+backward, 1 warm-up, peak = "
            "VmHWM - VmRSS over one step after resetting VmHWM; time = median of "
            f"{args.repeats} (vectorised) / {args.slow_repeats} (loop) steps. Global: N images x 128-d, 2 views, "
            "4 partitions. Local: L^R, 12 slices x 2 views, 64x48x48 maps, K=3, 128-d linear embedding. AnCo: "
            "65536 pixels x 128-d, 4 classes, 256 queries, 512 negatives; loop = per-query gathered negatives. "
            f"memory_ratio is null when the vectorised peak is below {RESOLUTION_MIB} MiB (not resolvable)."
        ),
        "results": results,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
