"""MONAI transform pipelines.

Two kinds of pipeline, split the way MONAI bundles split them so the expensive part can be cached:

* :func:`volume_transforms` -- deterministic, per case: load (nibabel for NIfTI, SimpleITK for the rest),
  channel first, orientation, optional spacing, modality-aware intensity normalisation. Its output is cached
  and is also what inference applies (and inverts) later.
* :func:`sample_transforms` -- random, per training sample (a 2D slice or a 3D patch): pad/crop to the patch
  size, flips, intensity jitter, noise.
* :class:`BatchAffine` -- random rotation and zoom of a whole batch in one resampling call (MONAI's
  ``AffineTransform`` layer): per-sample ``RandAffined`` cost about as much as the rest of sampling together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.layers import AffineTransform
from monai.transforms import (
    ClipIntensityPercentilesd,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from medcl.config import AugmentConfig, DataConfig
from medcl.data.io import SimpleITKReader


def resolve_modality(cfg: DataConfig, dataset_modality: str) -> str:
    """The modality that selects intensity normalisation: the config's unless it says ``auto``."""
    return dataset_modality if cfg.modality == "auto" else cfg.modality


def volume_transforms(cfg: DataConfig, modality: str, *, with_label: bool) -> Compose:
    """Deterministic preprocessing of one case ``{"image": path(s), "label": path}``.

    Args:
        cfg: the ``data`` config section.
        modality: ``"mri"`` (percentile clip + z-score per channel) or ``"ct"`` (HU window to [0, 1]).
        with_label: also load and align ``"label"``.

    Returns:
        A ``Compose`` giving ``image`` as a float32 MetaTensor ``(C, X, Y, Z)`` and ``label`` as ``(1, X, Y, Z)``.
    """
    keys = ["image", "label"] if with_label else ["image"]
    load = LoadImaged(keys, image_only=True, ensure_channel_first=False)
    load._loader.register(SimpleITKReader())
    steps: list = [load, EnsureChannelFirstd(keys)]
    if cfg.orientation:
        steps.append(Orientationd(keys, axcodes=cfg.orientation, labels=None))
    if cfg.spacing:
        modes = ("bilinear", "nearest") if with_label else ("bilinear",)
        steps.append(Spacingd(keys, pixdim=cfg.spacing, mode=modes))
    if modality == "ct":
        lo, hi = cfg.ct_window
        steps.append(ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    else:
        lo, hi = cfg.percentiles
        steps.append(ClipIntensityPercentilesd("image", lower=lo, upper=hi, channel_wise=True))
        steps.append(NormalizeIntensityd("image", channel_wise=True))
    steps.append(EnsureTyped("image", dtype=np.float32))
    if with_label:
        steps.append(EnsureTyped("label", dtype=np.int64))
    return Compose(steps)


def sample_transforms(
    augment: AugmentConfig | None,
    patch_size: Sequence[int],
    *,
    with_label: bool,
    pos_fraction: float | None = None,
) -> Compose:
    """Random per-sample transforms for a 2D slice ``(C, H, W)`` or a 3D volume ``(C, X, Y, Z)``.

    Args:
        augment: augmentation settings; ``None`` gives only pad + random crop (e.g. for benchmarks).
        patch_size: output spatial size.
        with_label: the sample has a ``"label"`` key that must move with the image.
        pos_fraction: 3D labeled patches only: the fraction of patches centred on foreground
            (``RandCropByPosNegLabeld``); ``None`` crops uniformly at random.
    """
    keys = ["image", "label"] if with_label else ["image"]
    dims = len(patch_size)
    steps: list = [SpatialPadd(keys, spatial_size=list(patch_size), mode="constant")]
    if with_label and pos_fraction is not None:
        steps.append(
            RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=list(patch_size),
                pos=pos_fraction,
                neg=1.0 - pos_fraction,
                num_samples=1,
                allow_smaller=True,
            )
        )
    else:
        steps.append(RandSpatialCropd(keys, roi_size=list(patch_size), random_size=False))
    if augment is not None:
        if augment.flip:
            steps += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(min(dims, 2))]
        if augment.rotate90:
            steps.append(RandRotate90d(keys, prob=0.5, spatial_axes=(0, 1)))
        if augment.intensity > 0:
            steps.append(RandScaleIntensityd("image", factors=augment.intensity, prob=0.5))
            steps.append(RandShiftIntensityd("image", offsets=augment.intensity, prob=0.5))
        if augment.noise_std > 0:
            steps.append(RandGaussianNoised("image", prob=0.3, std=augment.noise_std))
    return Compose(steps)


class BatchAffine:
    """Random in-plane rotation and isotropic zoom applied per sample to a stacked batch.

    Each sample is transformed with probability ``prob``: angle ~ U(-rotate_deg, rotate_deg) about the last
    spatial axis (in-plane for 2D slices and for 3D patches), zoom ~ U(1 - scale, 1 + scale). Images are
    resampled bilinearly, labels with nearest neighbour, outside the input filled with zeros. The random
    draws come from the caller's generator, so a step's batch stays a pure function of its seed.
    """

    def __init__(self, rotate_deg: float, scale: float, prob: float = 0.5) -> None:
        self.rotate = float(np.deg2rad(rotate_deg))
        self.scale = float(scale)
        self.prob = prob
        self.warp_image = AffineTransform(
            normalized=False, zero_centered=True, mode="bilinear", padding_mode="zeros"
        )
        self.warp_label = AffineTransform(
            normalized=False, zero_centered=True, mode="nearest", padding_mode="zeros"
        )

    def theta(self, n: int, dims: int, rng: np.random.Generator) -> torch.Tensor:
        """(n, dims, dims + 1) affine matrices in voxel units about the patch centre."""
        on = rng.random(n) < self.prob
        angle = np.where(on, rng.uniform(-self.rotate, self.rotate, n), 0.0)
        zoom = np.where(on, 1.0 + rng.uniform(-self.scale, self.scale, n), 1.0)
        theta = np.zeros((n, dims, dims + 1))
        for d in range(dims):
            theta[:, d, d] = 1.0
        cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        if dims == 3:
            theta[:, 2, 2] = 1.0 / zoom
        return torch.as_tensor(theta, dtype=torch.float32)

    def __call__(self, batch: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        image = batch["image"]  # (B, C, *patch)
        theta = self.theta(image.shape[0], image.ndim - 2, rng)
        out = dict(batch)
        out["image"] = self.warp_image(image, theta)
        if "label" in batch:
            out["label"] = self.warp_label(batch["label"].float(), theta).round().long()
        return out


def batch_transforms(augment: AugmentConfig | None) -> BatchAffine | None:
    """The batch-level augmentation of a config (``None`` when rotation and zoom are off)."""
    if augment is None or (augment.rotate_deg <= 0 and augment.scale <= 0):
        return None
    return BatchAffine(augment.rotate_deg, augment.scale)
