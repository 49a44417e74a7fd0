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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor
from monai.transforms import Compose, Invertd, KeepLargestConnectedComponent, LoadImaged

from medcl.data.transforms import volume_transforms
from medcl.defaults import DEFAULT_RUNS
from medcl.errors import DataError
from medcl.inference.window import make_inferer
from medcl.methods import DataSpec, build_method, validate_config
from medcl.precision import resolve_precision, set_compute_dtype
from medcl.runtime.checkpoint import load_checkpoint
from medcl.runtime.device import resolve_device
from medcl.tracking.mlflow_tracking import resolve_checkpoint

log = logging.getLogger(__name__)


def refuse_pretraining(cfg, source: str) -> None:
    """A label-free pretraining run (its method never validates) learned features, not a segmentation.

    Raises:
        MedclError: ``cfg`` is such a run's config; the message says how to fine-tune it.
    """
    from medcl.errors import MedclError
    from medcl.methods import METHODS

    method = METHODS.get(cfg.method_name)
    if method is not None and not method.validates:
        raise MedclError(
            f"{source} is a {cfg.method_name} pretraining run: its network learned features from unlabeled "
            f"images and was never trained to segment. Fine-tune it on labeled cases first, e.g. `medcl finetune "
            f"configs/<dataset>/finetune.yaml --data DIR --labeled 5 --init {source}`, then segment with that run"
        )


@dataclass
class Segmentation:
    """One prediction: the label map in the input's voxel grid and, optionally, the class probabilities."""

    labels: np.ndarray  # (X, Y, Z) uint8
    affine: np.ndarray  # (4, 4) RAS affine of the input
    probabilities: np.ndarray | None = None  # (K, X, Y, Z) float32
    uncertainty: np.ndarray | None = None  # (X, Y, Z) float32, see Predictor.segment


@dataclass(frozen=True)
class View:
    """One test-time pass: flip ``flip`` (spatial axes), then rotate by ``rot`` quarter turns in ``plane``."""

    flip: tuple[int, ...] = ()
    rot: int = 0
    plane: tuple[int, int] = (0, 1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The view of a ``(B, C, X, Y, Z)`` tensor."""
        if self.flip:
            x = torch.flip(x, [2 + a for a in self.flip])
        if self.rot % 4:
            x = torch.rot90(x, self.rot, [2 + a for a in self.plane])
        return x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """Map a ``(B, K, X', Y', Z')`` prediction of the view back to the unviewed grid."""
        if self.rot % 4:
            y = torch.rot90(y, -self.rot, [2 + a for a in self.plane])
        if self.flip:
            y = torch.flip(y, [2 + a for a in self.flip])
        return y


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
        # Set by load(): the whole trained method (its other networks, e.g. an EMA teacher, stay on the CPU
        # until asked for), the checkpoint file and the MLflow run that wrote it.
        self.method = None
        self.checkpoint: Path | None = None
        self.model_run_id: str | None = None

    @classmethod
    def load(
        cls,
        source: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        tracking_uri: str | None = None,
        output: str | Path = DEFAULT_RUNS,
    ) -> Predictor:
        path = resolve_checkpoint(source, tracking_uri, output)
        state = load_checkpoint(path, map_location="cpu")
        cfg = validate_config(state["config"], source=f"config stored in {path}")
        refuse_pretraining(cfg, source)
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
        predictor = cls(cfg, spec, method.inference_network(), resolve_device(device), source, precision)
        predictor.method = method.eval()
        predictor.checkpoint = path
        predictor.model_run_id = state.get("mlflow_run_id")
        return predictor

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

    def tta_views(self, *, rotations: bool = False) -> list[View]:
        """The TTA passes: every flip of :meth:`tta_flips`, plus quarter turns in the image plane.

        Args:
            rotations: Add 90 and 270 degree rotations in the slice plane (2D models) or the first two axes
                (3D models) to the flips; ``medcl suggest --strategy tta`` uses them.
        """
        if self.spec.spatial_dims == 2:
            plane = tuple(a for a in range(3) if a != self.cfg.data.slice_axis)
        else:
            plane = (0, 1)
        views = [View(flip=f, plane=plane) for f in self.tta_flips()]
        if rotations:
            views += [View(rot=k, plane=plane) for k in (1, 3)]
        return views

    def inferer(self, progress: bool = False):
        """The sliding-window inferer of this model (MONAI; 50% overlap, Gaussian blending)."""
        return make_inferer(
            self.spec.spatial_dims,
            self.spec.patch_size,
            slice_axis=self.cfg.data.slice_axis,
            overlap=0.5,
            mode="gaussian",
            sw_batch_size=self.sw_batch_size,
            progress=progress,
        )

    @torch.inference_mode()
    def probability_stats(
        self,
        image: torch.Tensor,
        views: Sequence[View] = (View(),),
        *,
        net: Callable[[torch.Tensor], torch.Tensor] | None = None,
        progress: bool = False,
        variance: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean (and variance) over ``views`` of the softmax of a preprocessed ``(C, X, Y, Z)`` volume.

        Args:
            image: The preprocessed volume (what :meth:`preprocess_case` returns).
            views: Test-time passes; one identity view by default (variance zero).
            net: Another network of the same method (an EMA teacher, MCSC's second network) or any callable
                mapping ``(B, C, *S)`` windows to ``(B, K, *S)`` logits; default the exported network.
            progress: A progress bar over windows.
            variance: Also accumulate the variance (a second ``(K, X, Y, Z)`` buffer); off, ``var`` is None.

        Returns:
            ``(mean, var)``, each ``(K, X, Y, Z)`` float32 on the CPU; ``var`` is the per-class population
            variance over the views, or None when not asked for.
        """
        inferer = self.inferer(progress)
        net = self.net if net is None else net
        x = torch.as_tensor(image).unsqueeze(0).to(self.device)  # (1, C, X, Y, Z)
        total = total_sq = None
        for view in views:
            logits = inferer(view.apply(x), net)
            probs = view.invert(torch.softmax(logits.float(), dim=1))  # (1, K, X, Y, Z)
            total = probs if total is None else total + probs
            if variance:
                total_sq = probs * probs if total_sq is None else total_sq + probs * probs
        mean = total / len(views)
        if total_sq is None:
            return mean[0].cpu(), None
        var = (total_sq / len(views) - mean * mean).clamp_min(0.0)
        return mean[0].cpu(), var[0].cpu()

    def preprocess_case(self, image_paths: Sequence[str | Path]) -> tuple[dict, MetaTensor]:
        """The training preprocessing of one case (one file per channel), checked.

        Returns:
            The transform's output dict (needed to invert) and its ``(C, X, Y, Z)`` image.

        Raises:
            DataError: Wrong number of channel files, unreadable file, not a 3D image, non-finite values.
        """
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
        return self._checked(data, paths[0])

    def _checked(self, data: dict, name: str) -> tuple[dict, MetaTensor]:
        """``(data, image)`` of a preprocessed case once its image is a finite ``(C, X, Y, Z)`` volume."""
        image: MetaTensor = data["image"]
        if image.ndim != 4:
            raise DataError(f"{name}: expected a 3D image, got spatial shape {tuple(image.shape[1:])}")
        if image.shape[0] != self.spec.in_channels:
            raise DataError(
                f"{name}: the model takes {self.spec.in_channels} channel(s) but the image has {image.shape[0]} "
                f"(shape {tuple(image.shape[1:])} + {image.shape[0]}); a 4D image is not a 3D volume"
            )
        if not torch.isfinite(image).all():
            raise DataError(f"{name}: the image has NaN or infinite intensities")
        return data, image

    def preprocess_array(
        self,
        image: np.ndarray,
        affine: np.ndarray | None = None,
        *,
        spacing: Sequence[float] | None = None,
        name: str = "array",
    ) -> tuple[dict, MetaTensor]:
        """:meth:`preprocess_case` for an image held in memory (see :meth:`segment_array`).

        The array follows nibabel's convention (what ``nib.load(f).get_fdata()`` gives): indexed
        ``(x, y, z)``, or ``(C, x, y, z)`` for several channels, with a RAS voxel-to-world ``affine``. Without
        an affine the voxels are taken as axis-aligned with ``spacing`` (default 1 mm). The steps after file
        loading are those of :meth:`preprocess_case`.

        Raises:
            DataError: Wrong number of dimensions or channels, a malformed affine, an affine and a spacing that
                disagree, or NaN/infinite intensities.
        """
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim not in (3, 4):
            raise DataError(f"{name}: expected an (X, Y, Z) or (C, X, Y, Z) array, got shape {arr.shape}")
        if affine is None:
            steps = [1.0, 1.0, 1.0] if spacing is None else [float(s) for s in spacing]
            if len(steps) != 3 or min(steps) <= 0:
                raise DataError(f"{name}: spacing must be 3 positive numbers (mm), got {list(spacing or [])}")
            affine = np.diag([*steps, 1.0])
        affine = np.asarray(affine, dtype=np.float64)
        if (
            affine.shape != (4, 4)
            or not np.isfinite(affine).all()
            or abs(np.linalg.det(affine[:3, :3])) < 1e-12
        ):
            raise DataError(
                f"{name}: affine must be a finite, invertible 4x4 matrix, got shape {affine.shape}"
            )
        if spacing is not None:
            implied = np.linalg.norm(affine[:3, :3], axis=0)
            if not np.allclose(implied, np.asarray(spacing, dtype=np.float64), rtol=1e-3):
                raise DataError(
                    f"{name}: spacing {list(spacing)} disagrees with the affine's voxel size "
                    f"{np.round(implied, 4).tolist()}; give one of them, or both consistent"
                )
        meta = {
            "affine": torch.as_tensor(affine),
            "original_affine": affine,
            "spatial_shape": np.asarray(arr.shape[-3:]),
            # NaN is MONAI's "no channel axis" (a channel is added); 0: the channels come first.
            "original_channel_dim": float("nan") if arr.ndim == 3 else 0,
            "space": "RAS",
            "filename_or_obj": name,
        }
        steps = [t for t in self.preprocess.transforms if not isinstance(t, LoadImaged)]
        try:
            data = Compose(steps)({"image": MetaTensor(torch.from_numpy(arr), meta=meta)})
        except Exception as exc:
            cause = exc.__cause__ or exc
            raise DataError(f"cannot preprocess {name}: {cause}") from None
        return self._checked(data, name)

    def segment(
        self,
        image_paths: Sequence[str | Path],
        *,
        tta: bool = False,
        postprocess: Literal["lcc"] | None = None,
        probabilities: bool = False,
        uncertainty: bool = False,
        progress: bool = False,
    ) -> Segmentation:
        """Label map of one case (one file per channel) in the first file's voxel grid.

        With ``uncertainty`` the result also carries a per-voxel uncertainty map on the same grid: the
        normalised entropy of the (mean) softmax, ``H / ln K`` in [0, 1]; with ``tta`` the variance of the
        softmax over the flips instead (mean over classes). The map is computed on the network's grid and
        inverted with the probabilities, so it lines up with the mask voxel for voxel.
        """
        data, image = self.preprocess_case(image_paths)
        return self.segment_preprocessed(
            data,
            image,
            tta=tta,
            postprocess=postprocess,
            probabilities=probabilities,
            uncertainty=uncertainty,
            progress=progress,
        )

    def segment_array(
        self,
        image: np.ndarray,
        affine: np.ndarray | None = None,
        *,
        spacing: Sequence[float] | None = None,
        tta: bool = False,
        postprocess: Literal["lcc"] | None = None,
        probabilities: bool = False,
        uncertainty: bool = False,
        progress: bool = False,
        name: str = "array",
    ) -> Segmentation:
        """:meth:`segment` for an image held in memory: the label map on the array's own voxel grid.

        Args:
            image: ``(X, Y, Z)`` or ``(C, X, Y, Z)``, indexed as nibabel indexes a NIfTI file.
            affine: The RAS voxel-to-world matrix (``nib.load(f).affine``); default ``diag(spacing)``.
            spacing: Voxel size in mm, when there is no affine (default 1 mm); checked against it otherwise.
            name: What error messages call the image.
        """
        data, img = self.preprocess_array(image, affine, spacing=spacing, name=name)
        return self.segment_preprocessed(
            data,
            img,
            tta=tta,
            postprocess=postprocess,
            probabilities=probabilities,
            uncertainty=uncertainty,
            progress=progress,
        )

    def segment_preprocessed(
        self,
        data: dict,
        image: MetaTensor,
        *,
        tta: bool = False,
        postprocess: Literal["lcc"] | None = None,
        probabilities: bool = False,
        uncertainty: bool = False,
        progress: bool = False,
    ) -> Segmentation:
        """The rest of :meth:`segment` for what :meth:`preprocess_case` or :meth:`preprocess_array` returned:
        network (with TTA), inversion to the input grid, argmax and post-processing."""
        from medcl.inference.uncertainty import normalized_entropy

        views = [View(flip=f) for f in self.tta_flips()] if tta else [View()]
        # (K, X, Y, Z) each; the variance buffer only for a TTA uncertainty map.
        probs, var = self.probability_stats(image, views, progress=progress, variance=uncertainty and tta)
        k = probs.shape[0]
        if uncertainty:
            unc = var.mean(0, keepdim=True) if var is not None else normalized_entropy(probs, dim=0)[None]
            probs = torch.cat([probs, unc])  # inverted together: same resampling, same grid
        data["pred"] = MetaTensor(probs, meta=image.meta)
        data["pred"].applied_operations = list(image.applied_operations)
        inverted = Invertd("pred", transform=self.preprocess, orig_keys="image", nearest_interp=False)(data)[
            "pred"
        ]
        inv = torch.as_tensor(inverted).float()
        unc_map = inv[k] if uncertainty else None
        inv = inv[:k]
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
            uncertainty=unc_map.clamp_min(0.0).numpy().astype(np.float32) if unc_map is not None else None,
        )
