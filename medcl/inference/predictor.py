"""Segment images with a trained model, in the input's own geometry.

The checkpoint carries everything: the config (hence the exact preprocessing of training), the class names
and the weights. Prediction runs the training's deterministic pipeline (load, channel first, orientation,
spacing, intensity), a sliding window over slices (2D models) or patches (3D models) with 50% overlap and
Gaussian blending, optional flip test-time augmentation, then MONAI's ``Invertd`` maps the class
probabilities back through the spacing and orientation steps to the voxel grid of the input file; argmax
gives the label map, which is written with the input's own header/geometry.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor
from monai.transforms import Invertd, KeepLargestConnectedComponent

from medcl.config import build_config
from medcl.data.io import read_sitk
from medcl.data.transforms import volume_transforms
from medcl.engine.checkpoint import atomic_tempfile, load_checkpoint
from medcl.engine.trainer import resolve_device
from medcl.errors import DataError
from medcl.inference.window import make_inferer
from medcl.methods import DataSpec, build_method
from medcl.precision import resolve_precision, set_compute_dtype
from medcl.tracking.mlflow_tracking import resolve_checkpoint

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def image_suffix(path: Path) -> str:
    """``.nii.gz``, ``.nii``, ``.nrrd``, ... of a file; ``""`` for a folder (DICOM series)."""
    name = path.name.lower()
    if path.is_dir():
        return ""
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


@dataclass
class Segmentation:
    """One prediction: the label map in the input's voxel grid and, optionally, the class probabilities."""

    labels: np.ndarray  # (X, Y, Z) uint8
    affine: np.ndarray  # (4, 4) RAS affine of the input
    probabilities: np.ndarray | None = None  # (K, X, Y, Z) float32


class Predictor:
    """A trained network with its preprocessing, ready to segment files.

    Use :meth:`load` with a checkpoint path, a run folder, an MLflow run id, a ``runs:/`` URI or a
    ``models:/<name>@<alias>`` URI.
    """

    def __init__(
        self,
        cfg,
        spec: DataSpec,
        net: torch.nn.Module,
        device: torch.device,
        source: str,
        precision: str = "auto",
    ) -> None:
        self.cfg = cfg
        self.spec = spec
        self.net = net.to(device).eval()
        self.device = device
        # Same rule as training (medcl.precision): bf16 autocast where the hardware has it; softmax,
        # TTA averaging and inversion are float32.
        self.precision = resolve_precision(precision, device)
        set_compute_dtype(self.net, self.precision.dtype)
        self.source = source
        self.preprocess = volume_transforms(cfg.data, spec.modality, with_label=False)
        self.sw_batch_size = cfg.val.sw_batch_size

    @classmethod
    def load(
        cls,
        source: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        tracking_uri: str | None = None,
        output: str | Path = "medcl_runs",
    ) -> Predictor:
        path = resolve_checkpoint(source, tracking_uri, output)
        state = load_checkpoint(path, map_location="cpu")
        cfg = build_config(state["config"], source=f"config stored in {path}")
        ds = state["data_spec"]
        spec = DataSpec(
            in_channels=int(ds["in_channels"]),
            num_classes=int(ds["num_classes"]),
            class_names=tuple(ds["class_names"]),
            spatial_dims=int(ds["spatial_dims"]),
            patch_size=tuple(ds["patch_size"]),
            modality=ds.get("modality", "mri"),
        )
        method = build_method(cfg, spec)
        method.load_state_dict(state["model"])
        return cls(cfg, spec, method.inference_network(), resolve_device(device), source, precision)

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    def tta_flips(self) -> list[tuple[int, ...]]:
        """Spatial axes flipped in each TTA pass: in-plane axes for 2D models (4 passes), all 3 for 3D (8)."""
        if self.spec.spatial_dims == 2:
            axes = [a for a in range(3) if a != self.cfg.data.slice_axis]
        else:
            axes = [0, 1, 2]
        return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]

    @torch.inference_mode()
    def _probabilities(self, image: torch.Tensor, tta: bool, progress: bool) -> torch.Tensor:
        """Softmax ``(K, X, Y, Z)`` of a preprocessed ``(C, X, Y, Z)`` volume, averaged over flips with TTA."""
        inferer = make_inferer(
            self.spec.spatial_dims,
            self.spec.patch_size,
            slice_axis=self.cfg.data.slice_axis,
            overlap=0.5,
            mode="gaussian",
            sw_batch_size=self.sw_batch_size,
            progress=progress,
        )
        x = torch.as_tensor(image).unsqueeze(0).to(self.device)  # (1, C, X, Y, Z)
        flips = self.tta_flips() if tta else [()]
        total = None
        for axes in flips:
            dims = [2 + a for a in axes]
            xi = torch.flip(x, dims) if dims else x
            logits = inferer(xi, self.net)
            probs = torch.softmax(logits.float(), dim=1)
            probs = torch.flip(probs, dims) if dims else probs
            total = probs if total is None else total + probs
        return (total / len(flips))[0].cpu()

    def segment(
        self,
        image_paths: Sequence[str | Path],
        *,
        tta: bool = False,
        postprocess: Literal["lcc"] | None = None,
        probabilities: bool = False,
        progress: bool = False,
    ) -> Segmentation:
        """Label map of one case (one file per channel) in the first file's voxel grid."""
        paths = [str(p) for p in image_paths]
        if len(paths) != self.spec.in_channels:
            raise DataError(
                f"{paths[0]}: the model takes {self.spec.in_channels} channel(s), got {len(paths)} file(s)"
            )
        try:
            data = self.preprocess({"image": paths[0] if len(paths) == 1 else paths})
        except Exception as exc:
            cause = exc.__cause__ or exc
            raise DataError(f"cannot read or preprocess {', '.join(paths)}: {cause}") from None
        image: MetaTensor = data["image"]
        if image.ndim != 4:
            raise DataError(f"{paths[0]}: expected a 3D image, got spatial shape {tuple(image.shape[1:])}")
        if image.shape[0] != self.spec.in_channels:
            raise DataError(
                f"{paths[0]}: the model takes {self.spec.in_channels} channel(s) but the image has {image.shape[0]} "
                f"(shape {tuple(image.shape[1:])} + {image.shape[0]}); a 4D image is not a 3D volume"
            )
        if not torch.isfinite(image).all():
            raise DataError(f"{paths[0]}: the image has NaN or infinite intensities")
        probs = self._probabilities(image, tta, progress)
        data["pred"] = MetaTensor(probs, meta=image.meta)
        data["pred"].applied_operations = list(image.applied_operations)
        inverted = Invertd("pred", transform=self.preprocess, orig_keys="image", nearest_interp=False)(data)[
            "pred"
        ]
        inv = torch.as_tensor(inverted).float()
        labels = inv.argmax(0, keepdim=True)  # (1, X, Y, Z)
        if postprocess == "lcc":
            keep = KeepLargestConnectedComponent(
                applied_labels=list(range(1, self.spec.num_classes)), independent=True
            )
            labels = torch.as_tensor(keep(labels))
        affine = np.asarray(image.meta.get("original_affine", inverted.affine), dtype=np.float64)
        return Segmentation(
            labels=labels[0].numpy().astype(np.uint8),
            affine=affine,
            probabilities=inv.numpy().astype(np.float32) if probabilities else None,
        )


def _atomic_target(out_path: Path) -> Path:
    """A temporary path beside ``out_path`` with the same (double) suffix, for write-then-rename."""
    suffix = image_suffix(out_path) or ".tmp"
    fd, tmp = atomic_tempfile(out_path, suffix)
    os.close(fd)
    return Path(tmp)


def write_labels(labels: np.ndarray, reference: Path, out_path: Path) -> Path:
    """Write a uint8 label map with the geometry of ``reference`` (atomically).

    NIfTI references keep their header (affine, qform/sform codes, units); other formats and DICOM series
    go through SimpleITK with the reference's origin, spacing and direction copied. The output format is the
    suffix of ``out_path``.
    """
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_target(out_path)
    try:
        if image_suffix(reference) in NIFTI_SUFFIXES and image_suffix(out_path) in NIFTI_SUFFIXES:
            ref = nib.load(str(reference))
            header = ref.header.copy()
            header.set_data_dtype(np.uint8)
            img = nib.Nifti1Image(labels.astype(np.uint8), ref.affine, header)
            img.header.set_slope_inter(1, 0)
            nib.save(img, str(tmp))
        else:
            import SimpleITK as sitk  # only for non-NIfTI outputs

            ref_img = read_sitk(reference)
            arr = labels.astype(np.uint8)
            out = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
            out.SetOrigin(ref_img.GetOrigin())
            out.SetSpacing(ref_img.GetSpacing())
            out.SetDirection(ref_img.GetDirection())
            sitk.WriteImage(out, str(tmp), useCompression=True)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path
