"""Strong views for student-teacher training: CutMix / ClassMix, colour jitter and Gaussian blur on a batch.

ACTION [0] (stage 3) builds the student's view of an unlabeled batch from the teacher's weak view: image
``i`` is mixed with image ``i + 1`` (cyclically) - a random box (CutMix [1]) or the pixels of half of the
classes of ``i``'s pseudo-label (ClassMix [2]) come from ``i``, the rest from ``i + 1`` - and the pseudo-labels
and confidences are mixed with the same mask; then colour jitter (p = 0.5) and Gaussian blur (p = 0.5,
sigma in [0.15, 1.15]) are applied. Stages 1-2 use jitter + blur alone as the teacher's view.

Everything here works on a whole batch at once, 2D ``(B, C, H, W)`` or 3D ``(B, C, D, H, W)``, with per-sample
random draws from a caller-given ``torch.Generator`` (a step's augmentation is then a function of its seed)
and no Python loop over samples or pixels. Inputs are never modified in place: the authors' pretraining code
jitters the batch in place so the student sees the teacher's jitter too (bug (i) of the methods notes); every
function here returns new tensors.

Single-channel intensities: colour jitter reduces to brightness (a multiplicative factor) and contrast (a
blend with the per-image mean); saturation and hue do not exist for one channel and are not applied.

- [0] C. You, W. Dai, Y. Min, L. Staib, J. S. Duncan, "Bootstrapping Semi-supervised Medical Image
  Segmentation with Anatomical-aware Contrastive Distillation", IPMI 2023, https://arxiv.org/abs/2206.02307
- [1] S. Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features",
  ICCV 2019, https://arxiv.org/abs/1905.04899
- [2] V. Olsson, W. Tranheden, J. Pinto, L. Svensson, "ClassMix: Segmentation-Based Data Augmentation for
  Semi-Supervised Learning", WACV 2021, https://arxiv.org/abs/2007.07936
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MixMode",
    "classmix_masks",
    "colour_jitter",
    "cutmix_masks",
    "gaussian_blur",
    "mix",
    "step_generator",
    "strong_view",
]

MixMode = Literal["cutmix", "classmix", "none"]


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The random source of one training step's strong view: a function of (seed, rank, step), so a resumed run
    draws the same boxes and jitter again."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    mixed = ((seed * 1_000_003 + step) * 1_009 + rank) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)


def cutmix_masks(
    batch: int,
    spatial: Sequence[int],
    *,
    area: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """One random box per sample covering ``area`` of the patch (True inside the box).

    Side ratios: for ``n`` spatial axes, the first ``n - 1`` are drawn from ``U(area^(1/(n-1)), 1)`` and the
    last makes the product ``area`` (2D: width fraction in [0.5, 1], height = 0.5 / width, as in ReCo's cutout);
    the box position is uniform inside the patch.

    Args:
        batch: ``B``.
        spatial: Spatial sizes ``S``.
        area: Box volume as a fraction of the patch.
        generator: Random source.
        device: Device of the masks.

    Returns:
        Box masks. Shape: ``(B, *S)``, bool.
    """
    n = len(spatial)
    if not 0 < area <= 1:
        raise ValueError(f"area must be in (0, 1]; got {area}.")
    low = area ** (1.0 / max(n - 1, 1))
    ratios = low + (1 - low) * torch.rand(batch, n, generator=generator, device=device)  # (B, n)
    if n > 1:
        ratios[:, -1] = (area / ratios[:, :-1].prod(dim=1)).clamp(max=1.0)
    else:
        ratios[:, 0] = area
    size = torch.tensor(list(spatial), device=device, dtype=torch.float32)  # (n,)
    lengths = (ratios * size).round().clamp(min=1)  # (B, n)
    starts = (
        torch.rand(batch, n, generator=generator, device=device) * (size - lengths + 1)
    ).floor()  # (B, n)
    mask = torch.ones(batch, *spatial, dtype=torch.bool, device=device)
    for axis, s in enumerate(spatial):  # a loop over the 2-3 axes, not over samples or pixels
        coord = torch.arange(s, device=device, dtype=torch.float32)  # (S_axis,)
        inside = (coord >= starts[:, axis : axis + 1]) & (
            coord < starts[:, axis : axis + 1] + lengths[:, axis : axis + 1]
        )
        view = [batch] + [1] * n
        view[1 + axis] = s
        mask = mask & inside.view(view)
    return mask


def classmix_masks(labels: Tensor, num_classes: int, *, generator: torch.Generator | None = None) -> Tensor:
    """ClassMix masks: the pixels of a random half (rounded up) of each sample's present classes.

    Args:
        labels: (Pseudo-)label maps. Shape: ``(B, *S)``, int64.
        num_classes: ``K``.
        generator: Random source.

    Returns:
        Masks, True where the class was chosen. Shape: ``(B, *S)``, bool.
    """
    b = labels.shape[0]
    flat = labels.reshape(b, -1)  # (B, P)
    present = torch.zeros(b, num_classes, dtype=torch.bool, device=labels.device)
    present.scatter_(1, flat, True)  # (B, K)
    scores = torch.rand(b, num_classes, generator=generator, device=labels.device).masked_fill(~present, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # (B, K): 0 = smallest score; absent classes rank last
    wanted = (present.sum(dim=1, keepdim=True) + 1) // 2  # (B, 1): ceil(#present / 2)
    chosen = (rank < wanted) & present  # (B, K)
    return chosen.gather(1, flat).view_as(labels)


def mix(masks: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Mix every tensor's sample ``i`` with sample ``i + 1`` (cyclically): ``m_i * t_i + (1 - m_i) * t_{i+1}``.

    Args:
        masks: Where sample ``i`` keeps its own content. Shape: ``(B, *S)``, bool.
        *tensors: Images ``(B, C, *S)``, label maps ``(B, *S)``, confidence maps ``(B, *S)``, ... mixed with
            the same masks, so labels stay consistent with images.

    Returns:
        The mixed tensors, in order (new tensors; inputs untouched).
    """
    out = []
    for t in tensors:
        partner = t.roll(-1, dims=0)  # sample i + 1 at position i
        m = masks if t.ndim == masks.ndim else masks.unsqueeze(1)
        out.append(torch.where(m, t, partner))
    return tuple(out)


def colour_jitter(
    images: Tensor,
    *,
    prob: float = 0.5,
    brightness: float = 0.2,
    contrast: float = 0.2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample brightness and contrast jitter with probability ``prob`` (ACTION: 0.5, 0.2 / 0.2).

    ``x -> b * x`` with ``b ~ U(1 - brightness, 1 + brightness)``, then ``x -> mean + c (x - mean)`` with
    ``c ~ U(1 - contrast, 1 + contrast)`` and ``mean`` the per-image mean.

    Args:
        images: Shape: ``(B, C, *S)``.
        prob: Probability that a sample is jittered.
        brightness: Max relative brightness change.
        contrast: Max relative contrast change.
        generator: Random source.

    Returns:
        Jittered copy. Shape: ``(B, C, *S)``.
    """
    b = images.shape[0]
    view = (b,) + (1,) * (images.ndim - 1)
    dev = images.device
    on = torch.rand(b, generator=generator, device=dev) < prob  # (B,)
    bright = 1 + brightness * (2 * torch.rand(b, generator=generator, device=dev) - 1)  # (B,)
    cont = 1 + contrast * (2 * torch.rand(b, generator=generator, device=dev) - 1)  # (B,)
    x = images * bright.view(view)
    mean = x.flatten(1).mean(dim=1).view(view)  # (B, 1, ...)
    jittered = mean + cont.view(view) * (x - mean)
    # Untouched samples are copied exactly (not through the arithmetic above).
    return torch.where(on.view(view), jittered, images)


def gaussian_blur(
    images: Tensor,
    *,
    prob: float = 0.5,
    sigma: tuple[float, float] = (0.15, 1.15),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample separable Gaussian blur with probability ``prob``, ``sigma ~ U(sigma)`` (in voxels).

    One grouped convolution per spatial axis blurs every sample with its own kernel (skipped samples get a
    delta kernel); borders are reflected.

    Args:
        images: Shape: ``(B, C, *S)``, 2 or 3 spatial axes.
        prob: Probability that a sample is blurred.
        sigma: Range of the standard deviation.
        generator: Random source.

    Returns:
        Blurred copy. Shape: ``(B, C, *S)``.
    """
    b, c = images.shape[:2]
    n = images.ndim - 2
    if n not in (2, 3):
        raise ValueError(f"gaussian_blur expects 2 or 3 spatial axes; got shape {tuple(images.shape)}.")
    dev = images.device
    on = torch.rand(b, generator=generator, device=dev) < prob  # (B,)
    s = sigma[0] + (sigma[1] - sigma[0]) * torch.rand(b, generator=generator, device=dev)  # (B,)
    radius = max(1, math.ceil(3 * sigma[1]))
    taps = torch.arange(-radius, radius + 1, device=dev, dtype=images.dtype)  # (L,)
    kernel = torch.exp(-0.5 * (taps.unsqueeze(0) / s.unsqueeze(1).to(images.dtype)) ** 2)  # (B, L)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    delta = (taps == 0).to(images.dtype).expand(b, -1)
    kernel = torch.where(on.unsqueeze(1), kernel, delta)  # (B, L)
    weight = kernel.repeat_interleave(c, dim=0)  # (B * C, L): one kernel per (sample, channel)
    conv = F.conv2d if n == 2 else F.conv3d
    x = images.reshape(1, b * c, *images.shape[2:])  # (1, B * C, *S)
    for axis in range(n):
        shape = [b * c, 1] + [1] * n
        shape[2 + axis] = taps.numel()
        pad = [0, 0] * n
        pad[2 * (n - 1 - axis)] = pad[2 * (n - 1 - axis) + 1] = radius  # F.pad lists the last axis first
        x = conv(F.pad(x, pad, mode="reflect"), weight.view(shape), groups=b * c)
    return x.reshape(images.shape)


def strong_view(
    images: Tensor,
    labels: Tensor,
    *targets: Tensor,
    mode: MixMode,
    num_classes: int,
    jitter_prob: float = 0.5,
    blur_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, ...]:
    """The student's view of an unlabeled batch: mix (images, pseudo-labels, other targets), jitter, blur.

    Args:
        images: The teacher's (weak) view. Shape: ``(B, C, *S)``.
        labels: The teacher's pseudo-labels; ClassMix draws its classes from them. Shape: ``(B, *S)``, int64.
        *targets: Further per-pixel maps mixed with the same masks: the teacher's max class probability
            (FixMatch, ACTION++), the second network's pseudo-labels (MCSC). Shape: ``(B, *S)`` each.
        mode: ``"cutmix"``, ``"classmix"`` or ``"none"``.
        num_classes: ``K`` (ClassMix).
        jitter_prob: Probability of colour jitter per sample.
        blur_prob: Probability of blur per sample.
        generator: Random source.

    Returns:
        ``(images, labels, *targets)`` of the strong view, new tensors.
    """
    mixed = (images, labels, *targets)
    if mode == "cutmix":
        mixed = mix(
            cutmix_masks(images.shape[0], images.shape[2:], generator=generator, device=images.device), *mixed
        )
    elif mode == "classmix":
        mixed = mix(classmix_masks(labels, num_classes, generator=generator), *mixed)
    elif mode != "none":
        raise ValueError(f"mode must be 'cutmix', 'classmix' or 'none'; got {mode!r}.")
    images = colour_jitter(mixed[0], prob=jitter_prob, generator=generator)
    images = gaussian_blur(images, prob=blur_prob, generator=generator)
    return (images, *mixed[1:])
