"""Export a trained model for use outside medcl: TorchScript, ONNX, or a MONAI bundle.

Each format holds the bare network, mapping ``(B, C, *S)`` windows to ``(B, K, *S)`` logits, with dynamic
batch and spatial sizes (sizes the network accepts: multiples of its downsampling factor, 16 for the U-Nets).
The preprocessing, sliding window and inversion to the input grid that turn it into a segmenter are described
in ``medcl_inference.json`` beside it; the MONAI bundle spells them out as an inference config that
``python -m monai.bundle run`` executes on a folder of NIfTI files, without medcl.

Every export is checked before it is reported done: the exported network must reproduce the PyTorch logits
at the training patch size and at a larger size (so a network whose export froze its input size fails here,
not in a user's hands).
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcl import __version__
from medcl.errors import MedclError

log = logging.getLogger(__name__)

FORMATS = ("bundle", "torchscript", "onnx")
ONNX_OPSET = 18


def bare_network(predictor) -> torch.nn.Module:
    """A float32 CPU copy of the predictor's MONAI network, without medcl's feature hooks."""
    net = copy.deepcopy(predictor.net.net).float().cpu().eval()
    for module in net.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return net


def check_sizes(predictor) -> list[tuple[int, ...]]:
    """Two spatial sizes the export must handle: the patch size, and the patch size plus one bottleneck step."""
    patch = tuple(int(s) for s in predictor.spec.patch_size)
    step = int(predictor.net.size_divisor)
    return [patch, tuple(s + step for s in patch)]


def _check(name: str, run: Callable[[torch.Tensor], torch.Tensor], net, predictor) -> None:
    """Raise unless ``run`` reproduces ``net``'s logits at both :func:`check_sizes`."""
    gen = torch.Generator().manual_seed(0)
    for batch, size in zip((1, 2), check_sizes(predictor), strict=True):
        x = torch.randn(batch, predictor.spec.in_channels, *size, generator=gen)
        with torch.inference_mode():
            want = net(x)
        try:
            got = torch.as_tensor(run(x))
        except Exception as exc:
            raise MedclError(
                f"the {name} export does not run at input size {size} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); this network cannot be exported with dynamic "
                "spatial sizes"
            ) from None
        if got.shape != want.shape or not torch.allclose(got, want, atol=1e-3, rtol=1e-3):
            err = (got - want).abs().max().item() if got.shape == want.shape else float("nan")
            raise MedclError(
                f"the {name} export differs from the PyTorch network at input size {size} "
                f"(shape {tuple(got.shape)} vs {tuple(want.shape)}, max difference {err:.3g})"
            )


def to_torchscript(predictor, path: str | Path, *, check: bool = True, trace: bool = True) -> Path:
    """Save the network as TorchScript: scripted, so that every input size takes the same code path.

    Args:
        predictor: The loaded model.
        path: The ``.ts`` file to write.
        check: Compare the saved module with PyTorch at two sizes (:func:`check_sizes`).
        trace: When scripting fails (SwinUNETR), trace at the patch size instead; the check then tells whether
            the traced module still accepts other sizes.

    Raises:
        MedclError: The network cannot be scripted (and ``trace`` is off), or the check fails.
    """
    path = Path(path)
    net = bare_network(predictor)
    try:
        module = torch.jit.script(copy.deepcopy(net))
    except Exception as exc:  # Python constructs TorchScript cannot compile
        if not trace:
            raise MedclError(f"the network cannot be scripted ({type(exc).__name__})") from None
        log.info("torch.jit.script failed (%s); tracing at the patch size instead", type(exc).__name__)
        example = torch.zeros(2, predictor.spec.in_channels, *predictor.spec.patch_size)
        with torch.no_grad():
            module = torch.jit.trace(copy.deepcopy(net), example, check_trace=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(path))
    if check:
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
        with torch.jit.optimized_execution(False):  # the optimising passes cost seconds on a first call
            _check("TorchScript", loaded, net, predictor)
    return path


def require_onnx():
    """``(onnx, onnxruntime)``, or a MedclError saying how to install them."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as exc:
        raise MedclError(
            f"ONNX export needs the 'export' extra ({exc.name} is not installed): "
            "pip install 'medcl[export]'  (installs onnx, onnxruntime and onnxscript)"
        ) from None
    return onnx, onnxruntime


class OnnxNetwork:
    """An ONNX file run by onnxruntime, called like the PyTorch network (tensor in, tensor out)."""

    def __init__(self, path: str | Path) -> None:
        _, ort = require_onnx()
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().float().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: array})[0]).to(x.device)


def to_onnx(predictor, path: str | Path) -> Path:
    """Save the network as ONNX with dynamic batch and spatial axes, checked with onnxruntime."""
    onnx, _ = require_onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = bare_network(predictor)
    dims = predictor.spec.spatial_dims
    axes = {0: "batch", **{2 + i: f"size_{'xyz'[i]}" for i in range(dims)}}
    example = torch.zeros(2, predictor.spec.in_channels, *check_sizes(predictor)[1])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's TracerWarnings about shape-dependent branches
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))
    _check("ONNX", OnnxNetwork(path), net, predictor)
    return path


def inference_description(predictor) -> dict[str, Any]:
    """What turns the exported network into a segmenter: classes, preprocessing, sliding window."""
    cfg, spec = predictor.cfg, predictor.spec
    data = cfg.data
    intensity: dict[str, Any]
    if spec.modality == "ct":
        intensity = {"kind": "ct_window", "window": list(data.ct_window), "to": [0.0, 1.0], "clip": True}
    else:
        intensity = {"kind": "percentile_clip_then_zscore", "percentiles": list(data.percentiles)}
    return {
        "medcl_version": __version__,
        "class_names": list(spec.class_names),
        "in_channels": spec.in_channels,
        "input": "(B, C, *S) float32; output (B, K, *S) logits, softmax over K",
        "spatial_dims": spec.spatial_dims,
        "slice_axis": data.slice_axis if spec.spatial_dims == 2 else None,
        "patch_size": list(spec.patch_size),
        "size_divisor": int(predictor.net.size_divisor),
        "preprocessing": {
            "orientation": data.orientation or None,
            "spacing_mm": list(data.spacing) if data.spacing else None,
            "modality": spec.modality,
            "intensity": intensity,
        },
        "sliding_window": {"overlap": 0.5, "mode": "gaussian", "sw_batch_size": predictor.sw_batch_size},
        "postprocessing": "softmax, invert spacing/orientation to the input grid, argmax (uint8 labels)",
    }


def _bundle_preprocessing(predictor) -> list[dict[str, Any]]:
    """medcl's preprocessing (:func:`medcl.data.transforms.volume_transforms`) as bundle config items.

    Spelled out rather than serialised from the Compose, since MONAI transforms do not serialise; the export
    test compares the bundle's masks with ``medcl infer`` so the two cannot drift apart unnoticed.
    """
    data, modality = predictor.cfg.data, predictor.spec.modality
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True, "ensure_channel_first": False},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
    ]
    if data.orientation:
        steps.append(
            {"_target_": "Orientationd", "keys": "image", "axcodes": data.orientation, "labels": None}
        )
    if data.spacing:
        steps.append(
            {"_target_": "Spacingd", "keys": "image", "pixdim": list(data.spacing), "mode": "bilinear"}
        )
    if modality == "ct":
        lo, hi = data.ct_window
        steps.append(
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                **{"a_min": lo, "a_max": hi, "b_min": 0.0, "b_max": 1.0, "clip": True},
            }
        )
    else:
        lo, hi = data.percentiles
        steps.append(
            {
                "_target_": "ClipIntensityPercentilesd",
                "keys": "image",
                **{"lower": lo, "upper": hi, "channel_wise": True},
            }
        )
        steps.append({"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True})
    steps.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    return steps


def bundle_config(predictor) -> dict[str, Any]:
    """The bundle's ``configs/inference.json``: segment every NIfTI in ``dataset_dir`` into ``output_dir``.

    No ignite engine (MONAI's evaluator needs pytorch-ignite, which MONAI does not install): ``run`` is one
    expression looping over the files.
    """
    spec = predictor.spec
    window = {
        "roi_size": list(spec.patch_size),
        "sw_batch_size": predictor.sw_batch_size,
        "overlap": 0.5,
        "mode": "gaussian",
    }
    if spec.spatial_dims == 2:
        inferer = {"_target_": "SliceInferer", "spatial_dim": predictor.cfg.data.slice_axis, **window}
    else:
        inferer = {"_target_": "SlidingWindowInferer", **window}
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/input'",
        "output_dir": "$@bundle_root + '/output'",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz')) "
        "+ glob.glob(os.path.join(@dataset_dir, '*.nii')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'), map_location='cpu')",
        "network": "$@network_def.to(@device).eval()",
        "preprocessing": {"_target_": "Compose", "transforms": _bundle_preprocessing(predictor)},
        "inferer": inferer,
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_dtype": "$numpy.uint8",
                    "resample": False,
                    "separate_folder": False,
                    "print_log": False,
                },
            ],
        },
        # inference_mode as a decorator: no gradients, and no global grad state left behind for the caller.
        "predict": "$torch.inference_mode()(lambda d: dict(d, pred=@inferer(d['image'][None].to(@device), "
        "@network)[0].float().cpu()))",
        "segment": "$lambda path: @postprocessing(@predict(@preprocessing({'image': path})))",
        "run": ["$[@segment(path) for path in @datalist]"],
    }


def bundle_metadata(predictor) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json`` (MONAI model-zoo fields)."""
    import monai

    spec = predictor.spec
    modality = spec.modality.upper()
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by medcl {__version__}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"nibabel": _version("nibabel")},
        "name": f"medcl {predictor.cfg.method_name} segmentation",
        "task": f"{modality} segmentation of {', '.join(spec.class_names[1:])}",
        "description": f"{predictor.cfg.method_name} model trained with medcl {__version__}; "
        f"{'slice-by-slice 2D' if spec.spatial_dims == 2 else '3D'} sliding window, masks on the input grid",
        "authors": "medcl",
        "copyright": "see the training data's licence",
        "data_type": "nibabel",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": modality,
                    "num_channels": spec.in_channels,
                    "spatial_shape": list(spec.patch_size),
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): f"channel {i}" for i in range(spec.in_channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": spec.num_classes,
                    "spatial_shape": list(spec.patch_size),
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": {str(i): n for i, n in enumerate(spec.class_names)},
                }
            },
        },
    }


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def to_bundle(predictor, folder: str | Path) -> Path:
    """Write a MONAI bundle: ``configs/{metadata,inference}.json``, ``models/model.ts``, ``docs/README.md``."""
    root = Path(folder)
    to_torchscript(predictor, root / "models" / "model.ts")
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "metadata.json").write_text(json.dumps(bundle_metadata(predictor), indent=2) + "\n")
    (root / "configs" / "inference.json").write_text(json.dumps(bundle_config(predictor), indent=2) + "\n")
    (root / "docs").mkdir(exist_ok=True)
    (root / "docs" / "README.md").write_text(
        "# medcl segmentation bundle\n\n"
        f"Classes: {', '.join(predictor.spec.class_names)}. Exported by medcl {__version__} "
        f"(Python {platform.python_version()}).\n\n"
        "Segment every NIfTI file of a folder (masks are written as `<name>_seg.nii.gz`, uint8, on the input's "
        "grid):\n\n"
        "```bash\n"
        "python -m monai.bundle run --bundle_root . --config_file configs/inference.json \\\n"
        "    --meta_file configs/metadata.json --dataset_dir /path/to/images --output_dir /path/to/masks\n"
        "```\n\n"
        "`models/model.ts` is the TorchScript network: `(B, C, *S)` float32 in, `(B, K, *S)` logits out.\n"
    )
    return root


def export(predictor, fmt: str, out_dir: str | Path) -> list[Path]:
    """Export ``predictor``'s network as ``fmt`` into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    if fmt not in FORMATS:
        raise MedclError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()  # before any file is written
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "bundle":
        to_bundle(predictor, out)
        written = sorted(p for p in out.rglob("*") if p.is_file())
    else:
        model = (
            to_torchscript(predictor, out / "model.ts")
            if fmt == "torchscript"
            else to_onnx(predictor, out / "model.onnx")
        )
        description = out / "medcl_inference.json"
        description.write_text(json.dumps(inference_description(predictor), indent=2) + "\n")
        written = [model, description]
    return written
