"""Heads of ACTION / ACTION++ [0, 1]: relational-distillation projections and the representation head.

Stages 1-2 (relational KL distillation, :mod:`medcl.losses.relational`):

* :class:`LatentProjection` - average pooling of the encoder bottleneck to a ``grid`` map, flattened, then
  two linear layers (``C * grid^n -> C -> d_g``; d_g = 512 in 2D, 128 in 3D). As in the authors' ``MLP``
  there is no non-linearity between them. The authors pool globally (``grid=1``) a batch-normalised
  bottleneck; after MONAI's instance norm a global pool gives nearly the same vector for every image (see
  :class:`medcl.models.heads.GlobalProjectionHead`), hence the grid.
* :class:`LatentPredictor` - the student's two linear layers ``d_g -> d_g -> d_g`` on top (ISD/BYOL style).
* :class:`WindowProjection` / :class:`WindowPredictor` - the local head on the **segmentation logits**: each
  window is average-pooled to ``p x p`` (``p^3``) cells and mapped by 1x1 convolutions ``K -> 2K -> K``
  (student predictor ``K -> K -> K``), giving a ``K * p^n`` vector per window. Because both are pointwise
  and linear per cell, they are applied once to the pooled cell map before the windows are cut out
  (:func:`window_embeddings`), which gives the same numbers as projecting window by window.

Stage 3:

* :class:`RepresentationHead` - on the concatenation of the bottleneck and every decoder map, each resized
  to the output resolution: conv 3x3 (no bias) then conv 1x1, no non-linearity between (the authors'
  ``RepresentationHead``; width 512 in ACTION, 496 in ACTION++ 2D, d = 128 in the ACTION++ paper).
* :class:`PyramidRepresentationHead` - the same two layers with the 3x3 convolution split by input map and
  applied at each map's own resolution, the D-channel results resized and summed (``method.rep_head:
  pyramid``). A convolution over a concatenation is the sum of convolutions over its parts, and resizing is
  linear and per channel, so for a 1x1 kernel both heads compute the same function; for the 3x3 kernel each
  map's neighbourhood is taken at its own resolution instead of after upsampling. The wide full-resolution
  stack is never built: on ACDC 128x128 (496 -> 128 channels) the convolutions cost 16x fewer operations.

Shape letters: B batch, C channels, K classes, S spatial sizes, W windows, D / d_g embedding sizes.

- [0] C. You, W. Dai, Y. Min, L. Staib, J. S. Duncan, "Bootstrapping Semi-supervised Medical Image
  Segmentation with Anatomical-aware Contrastive Distillation", IPMI 2023, https://arxiv.org/abs/2206.02307
- [1] C. You, W. Dai, Y. Min, L. Staib, J. Sekhon, J. S. Duncan, "ACTION++: Improving Semi-supervised Medical
  Image Segmentation with Adaptive Anatomical Contrast", MICCAI 2023, https://arxiv.org/abs/2304.02689
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv, Pool
from torch import Tensor, nn

from medcl.models.networks import NetOutput
from medcl.precision import mixed_precision

__all__ = [
    "LatentPredictor",
    "LatentProjection",
    "PyramidRepresentationHead",
    "RepresentationHead",
    "WindowPredictor",
    "WindowProjection",
    "count_windows",
    "decoder_stack",
    "window_embeddings",
]


class LatentProjection(nn.Module):
    """Pool the bottleneck to ``grid^n`` cells, flatten, ``Linear(C * grid^n, C)``, ``Linear(C, out)``.

    The global relational embedding. ``grid=1`` is the authors' global average pool.

    Shape:
        - Input: ``(B, C, *S)`` with ``len(S) == spatial_dims``.
        - Output: ``(B, out)``, not normalised.
    """

    def __init__(self, in_channels: int, out: int, grid: int = 4, spatial_dims: int = 2) -> None:
        """Build the pooling and the two linear layers."""
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}.")
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](grid)
        self.mlp = nn.Sequential(
            nn.Linear(in_channels * grid**spatial_dims, in_channels), nn.Linear(in_channels, out)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Pool to the grid and project: ``(B, C, *S) -> (B, C * grid^n) -> (B, out)``."""
        return self.mlp(self.pool(x).flatten(1))


class LatentPredictor(nn.Module):
    """The student's predictor on the global embedding: ``Linear(d, d)`` twice. Shape: ``(B, d) -> (B, d)``."""

    def __init__(self, dim: int) -> None:
        """Build the two linear layers."""
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.Linear(dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, d) -> (B, d)``."""
        return self.mlp(x)


class WindowProjection(nn.Module):
    """1x1 convolutions ``K -> 2K -> K`` on pooled logit cells (the local relational head).

    Shape:
        - Input: ``(B, K, *S')`` pooled cells.
        - Output: ``(B, K, *S')``.
    """

    def __init__(self, channels: int, spatial_dims: int) -> None:
        """Build the two pointwise convolutions."""
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.block = nn.Sequential(conv(channels, 2 * channels, 1), conv(2 * channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, K, *S') -> (B, K, *S')``."""
        return self.block(x)


class WindowPredictor(WindowProjection):
    """The student's predictor on pooled cells: 1x1 convolutions ``K -> K -> K``."""

    def __init__(self, channels: int, spatial_dims: int) -> None:
        """Build the two pointwise convolutions."""
        nn.Module.__init__(self)
        conv = Conv[Conv.CONV, spatial_dims]
        self.block = nn.Sequential(conv(channels, channels, 1), conv(channels, channels, 1))


def count_windows(spatial: Sequence[int], window: int, stride: int, pool: int) -> int:
    """Number of windows :func:`window_embeddings` cuts from a patch of size ``spatial``."""
    block = window // pool
    total = 1
    for s in spatial:
        cells = s // block
        total *= (cells - pool) // (stride // block) + 1
    return total


def window_embeddings(logits: Tensor, window: int, stride: int, pool: int, *heads: nn.Module) -> Tensor:
    """One vector per sliding window of a logits map: pool, project (``heads`` in order), cut, flatten.

    Windows of ``window`` pixels (voxels) per axis start every ``stride`` pixels; each is average-pooled to
    ``pool`` cells per axis (so the cell size is ``window // pool``; a remainder at the patch border that
    fills no cell is dropped, as adaptive pooling of a full window would never see it either). Every window
    position that fits is used: unlike the authors' loop, the last one is not skipped (7 x 7 windows of 64
    with stride 32 on 256 x 256, where the reference takes 6 x 6).

    Args:
        logits: Segmentation logits. Shape: ``(B, K, *S)``, 2 or 3 spatial axes.
        window: Window size in pixels; a multiple of ``pool``.
        stride: Window stride in pixels; a multiple of ``window // pool``.
        pool: Cells per axis of a pooled window.
        *heads: Pointwise modules applied to the pooled cell map (projection, then predictor).

    Returns:
        Window embeddings, window positions in raster order. Shape: ``(B, W, K * pool^n)``.
    """
    n = logits.ndim - 2
    block = window // pool
    step = stride // block
    pool_fn = F.avg_pool2d if n == 2 else F.avg_pool3d
    cells = pool_fn(logits, kernel_size=block, stride=block)  # (B, K, *S // block)
    for head in heads:
        cells = head(cells)
    b, k = cells.shape[:2]
    for axis in range(n):
        cells = cells.unfold(2 + axis, pool, step)  # (..., n_windows_axis, ..., pool) appended at the end
    # (B, K, w_1, .., w_n, p_1, .., p_n) -> (B, w_1 .. w_n, K, p_1 .. p_n) -> (B, W, K * p^n)
    cells = cells.permute(0, *range(2, 2 + n), 1, *range(2 + n, 2 + 2 * n))
    windows = cells.shape[1 : 1 + n]
    return cells.reshape(b, math.prod(windows), -1)


def decoder_stack(out: NetOutput, size: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
    """The bottleneck and every decoder map resized to ``size`` and concatenated along channels.

    Args:
        out: A network's feature output.
        size: Target spatial size (the logits size, or that divided by the representation stride).
        dtype: Cast each map to this dtype before resizing (None keeps the maps' own).

    Returns:
        Shape: ``(B, C_e + sum_k C_k, *size)``.
    """
    maps = []
    for fmap in (out.embedding, *out.features.values()):
        if dtype is not None:
            fmap = fmap.to(dtype)
        maps.append(_resize(_channels_last(fmap), size))  # channels-last: ~10x faster resizing on the CPU
    return torch.cat(maps, dim=1)


class RepresentationHead(nn.Module):
    """conv 3x3 (no bias) then conv 1x1: the dense representation for AnCo and SAACL.

    Shape:
        - Input: ``(B, C, *S)`` (:func:`decoder_stack`).
        - Output: ``(B, D, *S)``, not normalised (the losses normalise).
    """

    def __init__(self, in_channels: int, out: int, spatial_dims: int) -> None:
        """Build the two convolutions."""
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.block = nn.Sequential(conv(in_channels, out, 3, padding=1, bias=False), conv(out, out, 1))

    @mixed_precision
    def forward(self, x: Tensor | NetOutput, size: Sequence[int] | None = None) -> Tensor:
        """``(B, C, *S) -> (B, D, *S)``; given a network's :class:`NetOutput`, its :func:`decoder_stack` at
        ``size`` first.

        Under reduced precision the stack is built in the compute dtype (each map cast at its own, mostly low,
        resolution before upsampling), so the wide full-resolution stack is never materialised in float32.
        """
        if isinstance(x, NetOutput):
            if size is None:
                raise ValueError("RepresentationHead needs the stack's size with a NetOutput")
            x = decoder_stack(x, size, dtype=getattr(self, "compute_dtype", None))
        return self.block(x)


class PyramidRepresentationHead(nn.Module):
    """Per-map conv 3x3 (no bias) at each map's resolution, summed top-down, then conv 1x1.

    The cheap form of :class:`RepresentationHead` (see the module docstring). From the coarsest map to the
    finest, the running sum is resized to the next map's size and added to that map's convolution (the
    top-down path of a feature pyramid); maps finer than ``size`` are average-pooled to it first. The maps
    are processed channels-last, where the CPU's bilinear resize is about 10x faster than channels-first.

    Shape:
        - Input: a :class:`NetOutput` whose bottleneck and decoder maps have the channels given at construction.
        - Output: ``(B, D, *size)``, not normalised (the losses normalise).
    """

    def __init__(self, channels: dict[str, int], out: int, spatial_dims: int) -> None:
        """One 3x3 convolution per map (``channels``: map name -> channels, ``"embedding"`` the bottleneck)."""
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.convs = nn.ModuleDict(
            {name: conv(c, out, 3, padding=1, bias=False) for name, c in channels.items()}
        )
        self.proj = conv(out, out, 1)

    @mixed_precision
    def forward(self, x: NetOutput, size: Sequence[int]) -> Tensor:
        """``NetOutput -> (B, D, *size)``."""
        size = tuple(size)
        maps = {"embedding": x.embedding, **x.features}
        if set(maps) != set(self.convs):
            raise ValueError(
                f"PyramidRepresentationHead built for maps {sorted(self.convs)}, got {sorted(maps)}"
            )
        dtype = getattr(self, "compute_dtype", None)
        total: Tensor | None = None
        for name, fmap in sorted(maps.items(), key=lambda item: math.prod(item[1].shape[2:])):
            fmap = _channels_last(fmap if dtype is None else fmap.to(dtype))
            if any(a > b for a, b in zip(fmap.shape[2:], size, strict=True)):
                pool = F.adaptive_avg_pool2d if len(size) == 2 else F.adaptive_avg_pool3d
                fmap = pool(fmap, size)
            y = self.convs[name](fmap)
            total = y if total is None else y + _resize(total, y.shape[2:])
        assert total is not None
        return self.proj(_resize(total, size))


def _channels_last(t: Tensor) -> Tensor:
    """``t`` (4D or 5D) in channels-last memory order: same values, faster CPU resizing."""
    return t.contiguous(memory_format=torch.channels_last if t.ndim == 4 else torch.channels_last_3d)


def _resize(t: Tensor, size: Sequence[int]) -> Tensor:
    """Bi-/trilinear resize of ``(B, C, *S)`` to ``size`` (``align_corners=False``); ``t`` when already there."""
    if tuple(t.shape[2:]) == tuple(size):
        return t
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(t, size=tuple(size), mode=mode, align_corners=False)
