"""``medcl infer``: segment NIfTI files (and anything SimpleITK reads) with a trained model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medcl.commands.flags import add_compute_flags
from medcl.errors import MedclError

__all__ = ["InputCase", "add_parser", "collect_inputs", "output_path", "run"]  # noqa: F822 (lazy, below)


def __getattr__(name: str):
    """The re-exported names of :mod:`medcl.inference.inputs`, imported on first use: importing it pulls in
    torch and MONAI, which `medcl --help` must not wait for."""
    if name in ("InputCase", "collect_inputs", "output_path"):
        from medcl.inference import inputs

        return getattr(inputs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "infer",
        help="segment images with a trained model",
        description="Segment images with a trained model. Masks are written as uint8 images named after the input, "
        "on the input's own voxel grid and geometry (orientation, spacing, origin restored).",
    )
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint file, run folder, MLflow run id, runs:/<id>/<path> or models:/<name>@<alias>",
    )
    p.add_argument(
        "-i",
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="image file(s), a folder of images, a DICOM series folder, or a .txt list of paths",
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="folder for the masks (created if needed)"
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="average over flips: 4x the time for 2D models, 8x for 3D; usually a small Dice gain",
    )
    p.add_argument(
        "--postprocess", choices=["lcc"], help="lcc: keep the largest connected component per class"
    )
    p.add_argument(
        "--save-probabilities", action="store_true", help="also write <case>_probabilities.npz (K,X,Y,Z)"
    )
    p.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write <case>_uncertainty (float32, same grid and geometry as the mask): normalised softmax "
        "entropy in [0, 1], or with --tta the variance over the flips; high values mark voxels to check",
    )
    p.add_argument(
        "--format",
        choices=["same", "nifti"],
        default="same",
        help="output format: same as the input (default; DICOM series become NIfTI) or NIfTI",
    )
    add_compute_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--allow-input-folder",
        action="store_true",
        help="allow --output to be a folder that holds inputs (refused by default)",
    )
    p.add_argument("--tracking-uri", help="MLflow store for run ids / URIs (default: sqlite under --runs)")
    p.add_argument(
        "--runs",
        metavar="DIR",
        help="the runs folder training used, searched first for run ids and models:/ URIs (default "
        "medcl_runs; then every store medcl has written to)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def uncertainty_path(mask: Path) -> Path:
    """``<case>_uncertainty<suffix>`` beside the mask ``<case><suffix>``, in the mask's format."""
    from medcl.inference.predictor import image_suffix

    suffix = image_suffix(mask)
    return mask.with_name(mask.name[: len(mask.name) - len(suffix)] + "_uncertainty" + suffix)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from medcl.data.dataset import dataset_roots_of, refuse_writing_inside
    from medcl.inference.inputs import collect_inputs, output_path
    from medcl.inference.predictor import Predictor, write_labels, write_map

    out_dir = Path(args.output).expanduser().resolve()
    cases = collect_inputs(args.input)  # bad input lists fail before the model loads
    for dataset in dataset_roots_of([p for c in cases for p in c.paths]):
        refuse_writing_inside(dataset, out_dir, "--output")
    predictor = Predictor.load(
        args.model,
        device=args.device,
        precision=args.precision,
        tracking_uri=args.tracking_uri,
        output=args.runs,
    )
    if args.batch_size:
        predictor.sw_batch_size = args.batch_size
    input_dirs = {p.resolve().parent for c in cases for p in c.paths}
    if out_dir in input_dirs and not args.allow_input_folder:
        raise MedclError(
            f"--output {out_dir} holds input images; choose another folder (or --allow-input-folder)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    names = predictor.class_names
    rows, failures = [], []
    for case in tqdm(cases, desc="infer", disable=args.no_progress, dynamic_ncols=True):
        target = output_path(case, out_dir, args.format)
        try:
            if target.exists() and not args.overwrite:
                raise MedclError(f"{target} exists; pass --overwrite to replace it")
            if any(target.resolve() == p.resolve() for p in case.paths):
                raise MedclError(f"{target} would overwrite its own input")
            start = time.perf_counter()
            unc_target = uncertainty_path(target) if args.uncertainty else None
            if unc_target is not None and unc_target.exists() and not args.overwrite:
                raise MedclError(f"{unc_target} exists; pass --overwrite to replace it")
            seg = predictor.segment(
                case.paths,
                tta=args.tta,
                postprocess=args.postprocess,
                probabilities=args.save_probabilities,
                uncertainty=args.uncertainty,
            )
            write_labels(seg.labels, case.paths[0], target)
            if unc_target is not None and seg.uncertainty is not None:
                write_map(seg.uncertainty, case.paths[0], unc_target)
            if seg.probabilities is not None:
                np.savez_compressed(
                    out_dir / f"{case.name}_probabilities.npz",
                    probabilities=seg.probabilities.astype(np.float16),
                    class_names=np.array(names),
                )
            counts = np.bincount(seg.labels.ravel(), minlength=len(names))
            rows.append((case.name, time.perf_counter() - start, counts))
        except Exception as exc:  # one bad case must not stop the others
            if not isinstance(exc, MedclError | OSError | RuntimeError | ValueError):
                raise
            failures.append((case.name, str(exc)))
            tqdm.write(f"medcl: error: {case.name}: {exc}")
    width = max([len(r[0]) for r in rows] + [4])
    print(f"{'case':<{width}} {'seconds':>8} " + " ".join(f"{n[:12]:>12}" for n in names[1:]))
    for name, seconds, counts in rows:
        print(f"{name:<{width}} {seconds:>8.2f} " + " ".join(f"{int(c):>12}" for c in counts[1:]))
    print(f"{len(rows)} of {len(cases)} case(s) written to {out_dir} (voxels per class)")
    if failures:
        print(f"{len(failures)} case(s) failed: " + ", ".join(n for n, _ in failures))
        return 1
    return 0
