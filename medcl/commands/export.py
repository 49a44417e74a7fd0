"""``medcl export``: a trained model as a MONAI bundle, TorchScript or ONNX, for use without medcl."""

from __future__ import annotations

import argparse
from pathlib import Path

from medcl.defaults import DEFAULT_RUNS
from medcl.errors import MedclError

FORMATS = ("bundle", "torchscript", "onnx")  # medcl.inference.export.FORMATS, without importing torch


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained model as a MONAI bundle, TorchScript or ONNX",
        description="Export a trained model for use without medcl. torchscript and onnx write the bare network "
        "(model.ts / model.onnx: (B, C, *S) float32 in, (B, K, *S) logits out, any batch and spatial size the "
        "network accepts) with medcl_inference.json describing the preprocessing and sliding window; bundle "
        "writes a MONAI bundle whose inference config segments a folder of NIfTI files "
        "(python -m monai.bundle run ...). Each export is checked against the PyTorch network before it is "
        "reported. onnx needs the 'export' extra: pip install 'medcl[export]'.",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="checkpoint file, run folder, MLflow run id, runs:/<id>/<path> or models:/<name>@<alias>",
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write into (created)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    p.add_argument("--tracking-uri", help="MLflow store for run ids / URIs (default: sqlite under --runs)")
    p.add_argument(
        "--runs",
        metavar="DIR",
        help="the runs folder training used, searched first for run ids and models:/ URIs (default "
        f"{DEFAULT_RUNS}; then every store medcl has written to)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medcl.inference.export import export, require_onnx
    from medcl.inference.predictor import Predictor

    out = Path(args.output).expanduser().resolve()
    if out.is_file():
        raise MedclError(f"--output {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise MedclError(f"--output {out} is not empty; choose a new folder or pass --overwrite")
    if args.format == "onnx":
        require_onnx()  # say what to install before loading anything
    predictor = Predictor.load(
        args.model, device="cpu", precision="fp32", tracking_uri=args.tracking_uri, output=args.runs
    )
    written = export(predictor, args.format, out)
    for path in written:
        print(path)
    if args.format == "bundle":
        print(
            f"segment a folder of NIfTI files: python -m monai.bundle run --bundle_root {out} "
            f"--config_file {out / 'configs' / 'inference.json'} --meta_file {out / 'configs' / 'metadata.json'} "
            "--dataset_dir IMAGES --output_dir MASKS"
        )
    print(f"exported {args.model} as {args.format} to {out} (checked against the PyTorch network)")
    return 0
