"""``medcl infer``: segment NIfTI files (and anything SimpleITK reads) with a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from medcl.commands.flags import add_compute_flags
from medcl.defaults import DEFAULT_RUNS
from medcl.errors import MedclError

__all__ = [  # noqa: F822 (lazy, below)
    "InputCase",
    "add_parser",
    "collect_inputs",
    "output_path",
    "run",
    "uncertainty_path",
]


def __getattr__(name: str):
    """The re-exported names of :mod:`medcl.inference.inputs` and :mod:`medcl.services.segment`, imported on
    first use: importing them pulls in torch and MONAI, which `medcl --help` must not wait for."""
    if name in ("InputCase", "collect_inputs", "output_path"):
        from medcl.inference import inputs

        return getattr(inputs, name)
    if name == "uncertainty_path":
        from medcl.services import segment

        return segment.uncertainty_path
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
        f"{DEFAULT_RUNS}; then every store medcl has written to)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``medcl infer``; 1 when any case failed (the others are written)."""
    from tqdm.auto import tqdm

    from medcl.data.dataset import dataset_roots_of, refuse_writing_inside
    from medcl.inference.inputs import collect_inputs
    from medcl.inference.predictor import Predictor
    from medcl.services.segment import segment_cases

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
    result = segment_cases(
        predictor,
        cases,
        out_dir,
        fmt=args.format,
        tta=args.tta,
        postprocess=args.postprocess,
        probabilities=args.save_probabilities,
        uncertainty=args.uncertainty,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        on_error=lambda name, exc: tqdm.write(f"medcl: error: {name}: {exc}"),
    )
    names = predictor.class_names
    width = max([len(case.name) for case in result.written] + [4])
    print(f"{'case':<{width}} {'seconds':>8} " + " ".join(f"{n[:12]:>12}" for n in names[1:]))
    for case in result.written:
        print(
            f"{case.name:<{width}} {case.seconds:>8.2f} " + " ".join(f"{int(c):>12}" for c in case.counts[1:])
        )
    print(f"{len(result.written)} of {len(cases)} case(s) written to {out_dir} (voxels per class)")
    if result.failures:
        print(f"{len(result.failures)} case(s) failed: " + ", ".join(n for n, _ in result.failures))
        return 1
    return 0
