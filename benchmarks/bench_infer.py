"""Inference cost: `medcl infer`'s per-case path vs MONAI's bare sliding window on preloaded tensors.

For N Hippocampus cases (default 20) and the 2D BasicUNet of ``configs/hippocampus/supervised.yaml``:

* medcl: ``Predictor.segment`` (read the file, preprocess, slice-wise sliding window with 50% overlap and
  Gaussian blending, ``Invertd`` back to the input grid, argmax) + ``write_labels`` (atomic NIfTI write),
  at precision ``auto`` (bf16 on CPUs with native bf16) and ``fp32``, ``auto`` also with flip TTA;
* bare: the same MONAI inferer and the bare MONAI network in fp32 on the already preprocessed tensor (no
  I/O, no inversion), with and without the same flips;
* nnU-Net: the README's peer figure, 0.59 s per Hippocampus case without TTA on this CPU.

Weights are random (timing does not depend on them). Medians over the cases, measured in one run.
``--la`` also measures peak resident memory of segmenting one LA2018 volume with the 3D config
(``configs/la2018/supervised.yaml``: 3D BasicUNet, 112x112x80 patches) in a fresh process.

Run: ``.venv/bin/python benchmarks/bench_infer.py [--cases 20] [--la]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from medcl.data.dataset import load_dataset
from medcl.engine.data_setup import data_spec
from medcl.inference.outputs import write_labels
from medcl.inference.predictor import Predictor
from medcl.inference.window import make_inferer
from medcl.methods import build_method
from medcl.runtime.checkpoint import save_checkpoint
from medcl.services.configs import load_config

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def random_checkpoint(config: Path, dataset: Path, out: Path) -> Path:
    """A medcl checkpoint with untrained weights for ``config`` on ``dataset``."""
    cfg = load_config(config)
    info = load_dataset(dataset)
    spec = data_spec(cfg, info)
    method = build_method(cfg, spec)
    state = {
        "step": 0,
        "method": cfg.method_name,
        "config": cfg.model_dump(mode="json"),
        "data_spec": {
            "in_channels": spec.in_channels,
            "num_classes": spec.num_classes,
            "class_names": list(spec.class_names),
            "spatial_dims": spec.spatial_dims,
            "patch_size": list(spec.patch_size),
            "modality": spec.modality,
        },
        "model": method.state_dict(),
    }
    return save_checkpoint(state, out)


def hippocampus_timings(n: int, tmp: Path) -> dict:
    dataset = DATA / "Task04_Hippocampus"
    ckpt = random_checkpoint(REPO / "configs/hippocampus/supervised.yaml", dataset, tmp / "hippo.pt")
    auto = Predictor.load(str(ckpt), device="cpu")  # train.precision auto: bf16 where the CPU has it
    fp32 = Predictor.load(str(ckpt), device="cpu", precision="fp32")
    bare_net = fp32.net.net  # the MONAI BasicUNet itself: fp32, no medcl wrapper
    cases = load_dataset(dataset).cases[:n]
    inferer = make_inferer(
        2, auto.spec.patch_size, slice_axis=auto.cfg.data.slice_axis, sw_batch_size=auto.sw_batch_size
    )
    tensors = [auto.preprocess({"image": str(c.images[0])})["image"].as_tensor().unsqueeze(0) for c in cases]
    flips = [[2 + a for a in axes] for axes in auto.tta_flips()]

    def bare(x: torch.Tensor, tta: bool) -> None:
        total = 0
        for dims in flips if tta else [[]]:
            xi = torch.flip(x, dims) if dims else x
            probs = torch.softmax(inferer(xi, bare_net), 1)
            total = total + (torch.flip(probs, dims) if dims else probs)
        total.argmax(1)

    def medcl(predictor: Predictor, case, tta: bool) -> None:
        seg = predictor.segment(case.images, tta=tta)
        write_labels(seg.labels, case.images[0], tmp / f"{case.id}.nii.gz")

    for p in (auto, fp32):
        p.segment(cases[0].images)  # warm-up
    times: dict[str, list[float]] = {
        k: [] for k in ("bare_fp32", "bare_fp32_tta", "medcl_fp32", "medcl_auto", "medcl_auto_tta")
    }
    with torch.inference_mode():
        for case, x in zip(cases, tensors, strict=True):
            for key, fn, fn_args in (
                ("bare_fp32", bare, (x, False)),
                ("bare_fp32_tta", bare, (x, True)),
                ("medcl_fp32", medcl, (fp32, case, False)),
                ("medcl_auto", medcl, (auto, case, False)),
                ("medcl_auto_tta", medcl, (auto, case, True)),
            ):
                start = time.perf_counter()
                fn(*fn_args)
                times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "protocol": f"Task04_Hippocampus first {n} cases, 2D BasicUNet {auto.cfg.model.features}, 64x64 slice "
        f"windows, overlap 0.5 gaussian, CPU threads={torch.get_num_threads()}, auto precision = {auto.precision.name}; "
        "medcl = read + preprocess + sliding window + invert + argmax + NIfTI write; bare = MONAI SliceInferer "
        "on the preloaded preprocessed tensor + softmax + argmax",
        "s_per_case_median": {k: round(v, 4) for k, v in med.items()},
        "medcl_auto_vs_bare_fp32": round(med["medcl_auto"] / med["bare_fp32"], 3),
        "medcl_auto_tta_vs_bare_fp32_tta": round(med["medcl_auto_tta"] / med["bare_fp32_tta"], 3),
        "medcl_auto_vs_nnunet_0.59s": round(med["medcl_auto"] / 0.59, 3),
        "tta_cost": f"x{med['medcl_auto_tta'] / med['medcl_auto']:.2f}",
    }


LA_CHILD = """
import resource, sys, time, torch
from medcl.inference.predictor import Predictor
torch.set_num_threads({threads})
p = Predictor.load(sys.argv[1], device="cpu")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
seg = p.segment([sys.argv[2]])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, before / 1024, time.perf_counter() - start, seg.labels.shape)
"""


def la_memory(tmp: Path) -> dict:
    dataset = DATA / "LA2018"
    ckpt = random_checkpoint(REPO / "configs/la2018/supervised.yaml", dataset, tmp / "la.pt")
    case = load_dataset(dataset).cases[0]
    code = LA_CHILD.format(threads=torch.get_num_threads())
    out = subprocess.run(
        [sys.executable, "-c", code, str(ckpt), str(case.images[0])], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    peak, base, seconds, shape = out.stdout.strip().splitlines()[-1].split(" ", 3)
    return {
        "la_case": case.id,
        "la_shape": shape,
        "la_peak_rss_mib": round(float(peak)),
        "la_rss_before_predict_mib": round(float(base)),
        "la_seconds": round(float(seconds), 1),
        "la_model": "3D BasicUNet [16,32,64,128,256,16], 112x112x80 windows, overlap 0.5, sw_batch_size 4",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--la", action="store_true", help="also measure LA2018 3D peak memory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = hippocampus_timings(args.cases, Path(tmp))
        if args.la:
            result.update(la_memory(Path(tmp)))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
