"""Local contrastive loss of Chaitanya et al. [0] (strategies L^R and L^D) on decoder feature maps.

Two intensity-only augmentations of the same B slices go through the (frozen) encoder, the first decoder
blocks and the 1x1-conv head g2, giving maps f̂ = ``f1`` and f̃ = ``f2`` whose positions correspond. A local
region u is a K x K window (K x K x K in 3D); its embedding v_u is the flattened window through the caller's
trainable embedding ``embed`` (:class:`medcl.models.heads.RegionProjectionHead`: a shared bias-free linear
layer to 128-d, as the authors' code does), or the window mean. The loss itself holds no parameters and no
random state: random regions are drawn from the ``generator`` it is given. With s the cosine similarity and
the pair loss of :mod:`medcl.losses.ntxent` ([0], Eq. 2)::

    ℓ(u) = −log( e^{s(v̂_u, ṽ_u)/τ} / ( e^{s(v̂_u, ṽ_u)/τ} + Σ_{u'∈N(u)} ( e^{s(v̂_u, v̂_u')/τ} + e^{s(v̂_u, ṽ_u')/τ} ) ) )

* **positives** (``strategy``): ``"LR"``: the same region u in the other view of the image. ``"LD"``: also
  region u of every view of the other images of the batch that come from the same partition of another
  volume (``partition_ids`` / ``volume_ids``).
* **negatives** N(u) (``negatives``): the other regions u' ≠ u of both views of the anchor's own image
  (``"all"``), or only the 5 regions whose centres are nearest to u (``"neighbours5"``, the authors'
  choice; ties broken by region index). Negatives are the same for every positive pair of an anchor.
* **regions** (``regions``): ``"all"``: every window of a stride-K tiling, (H//K)·(W//K) of them;
  ``"grid13"``: the authors' 13 fixed windows over the valid top-left area [0, H−K] x [0, W−K], the 3 x 3
  grid of corners, edge mid-points and centre (indices 0-8, row-major) and the 4 quarter points
  (9-12); an int n: n distinct tiling windows drawn at random once per call and shared by the batch, so
  that region u is the same place in every image (L^D needs that).

Every anchor (both views, every region) contributes ℓ for each of its positives; the sum is divided by the
number of regions R and by the number of feature maps 2B, which is the authors' normalisation
(``local_loss / no_of_local_regions / bs`` with ``bs = 2 * batch_size``) and the local analogue of the
global loss's division by the number of images.

Differences from the authors' TensorFlow code (``krishnabits001/domain_specific_cl``, ``models.py``):

* their 5 negatives of each grid13 region are a hand-written list which, for 3 x 3 windows, includes
  windows that are not among the 13 regions; here the 5 nearest of the layout's own regions are used;
* their valid area stops one pixel short for K = 3 (top-left up to W−4); here it is [0, W−K];
* their L^D uses only the first view of each image as anchor, one direction per pair, and mixes the
  positive image's regions into some denominators; here every map is an anchor, pairs count in both
  directions, and the negatives are always the anchor's own image's regions, as for L^R;
* the paper describes the negatives as the other local regions (``negatives="all"``, our default).

Letters used in shape comments: B images, C channels, R regions, D embedding size, P = K^d pixels of a
window, M = 2B feature maps (map index m = view · B + image).

[0] K. Chaitanya, E. Erdil, N. Karani, E. Konukoglu, "Contrastive learning of global and local features for
    medical image segmentation with limited annotations", NeurIPS 2020. https://arxiv.org/abs/2006.10511
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.losses.ntxent import masked_logsumexp, pair_loss, same_id

RegionLayout = Literal["all", "grid13"]
LocalNegatives = Literal["all", "neighbours5"]
LocalStrategy = Literal["LR", "LD"]
REGION_LAYOUTS: tuple[str, ...] = get_args(RegionLayout)
LOCAL_NEGATIVES: tuple[str, ...] = get_args(LocalNegatives)
LOCAL_STRATEGIES: tuple[str, ...] = get_args(LocalStrategy)
NEIGHBOURS = 5  # the authors' number of negative regions per region (``no_of_neg_local_regions=5``)


def tiling_positions(spatial_shape: Sequence[int], region_size: int) -> Tensor:
    """Top-left corners of a stride-K tiling by K-wide windows, in row-major order.

    Args:
        spatial_shape: (H, W) or (H, W, D) of the feature map.
        region_size: K.

    Returns:
        Shape: (R, d) int64 with R = Π (size // K).
    """
    axes = [torch.arange(size // region_size) * region_size for size in spatial_shape]
    return torch.cartesian_prod(*axes).reshape(-1, len(spatial_shape))  # (R, d)


def grid13_positions(spatial_shape: Sequence[int], region_size: int) -> Tensor:
    """Top-left corners of the authors' 13 regions of a 2D map.

    With a = H − K and b = W − K (the last valid top-left row and column): the 3 x 3 grid
    {0, a//2, a} x {0, b//2, b} in row-major order, then (a//4, b//4), (a//4, 3b//4), (3a//4, b//4),
    (3a//4, 3b//4).

    Args:
        spatial_shape: (H, W).
        region_size: K.

    Returns:
        Shape: (13, 2) int64.

    Raises:
        ValueError: a 3D shape, or a map too small for 13 distinct regions (H or W below K + 4).
    """
    if len(spatial_shape) != 2:
        raise ValueError(
            f"The grid13 layout is defined for 2D maps only, got spatial shape {tuple(spatial_shape)}."
        )
    a, b = (size - region_size for size in spatial_shape)
    if min(a, b) < 4:
        raise ValueError(
            f"The grid13 layout needs maps of at least K + 4 = {region_size + 4} pixels per side for 13 distinct "
            f"regions, got {tuple(spatial_shape)}."
        )
    rows, cols = (0, a // 2, a), (0, b // 2, b)
    grid = [(y, x) for y in rows for x in cols]
    quarters = [(y, x) for y in (a // 4, 3 * a // 4) for x in (b // 4, 3 * b // 4)]
    return torch.tensor(grid + quarters, dtype=torch.long)  # (13, 2)


def nearest_regions(positions: Tensor, k: int = NEIGHBOURS) -> Tensor:
    """For each region, mark the k other regions whose centres are nearest (ties: lower index first).

    All windows have the same size, so distances between top-left corners are distances between centres;
    they are compared as exact integer squared distances.

    Args:
        positions: top-left corners. Shape: (R, d), int.
        k: neighbours per region (at most R − 1 are marked).

    Returns:
        Shape: (R, R) bool, False on the diagonal.
    """
    r = positions.shape[0]
    k = min(k, r - 1)
    dist2 = (positions[:, None, :] - positions[None, :, :]).pow(2).sum(-1)  # (R, R)
    eye = torch.eye(r, dtype=torch.bool, device=positions.device)  # (R, R)
    dist2 = dist2.masked_fill(eye, torch.iinfo(dist2.dtype).max)  # self last
    nearest = torch.sort(dist2, dim=1, stable=True).indices[:, :k]  # (R, k)
    return torch.zeros(r, r, dtype=torch.bool, device=positions.device).scatter_(1, nearest, True)  # (R, R)


class LocalContrastiveLoss(nn.Module):
    """Local contrastive loss L^R / L^D of Chaitanya et al. [0] between two views' feature maps.

    See the module docstring for the formula, the region layouts and the positive/negative sets.

    Args:
        temperature: τ; 0.1 in the paper and code.
        region_size: K, the window side (3 in the paper; 1 compares single pixels).
        regions: ``"all"`` (dense stride-K tiling), ``"grid13"`` (the authors' 13 fixed regions, 2D only),
            or an int n (n random tiling windows per call). Dense tiling sees every position each step;
            grid13 reproduces the paper's setting and is cheaper.
        negatives: ``"all"`` other regions of the image, or ``"neighbours5"`` (the 5 nearest regions of
            each region, the authors' code). Use neighbours5 to compare with the published numbers.
        strategy: ``"LR"`` (positives: the other view only) or ``"LD"`` (also same-partition images of
            other volumes; needs ``partition_ids`` and ``volume_ids`` in ``forward``).
        spatial_dims: 2 for (B, C, H, W) maps, 3 for (B, C, H, W, D) maps with K x K x K windows.

    Raises:
        ValueError: an unknown option, τ ≤ 0, K < 1, n < 1 random regions, or grid13 in 3D.

    Example:
        >>> loss_fn = LocalContrastiveLoss(regions="grid13", negatives="neighbours5")
        >>> embed = RegionProjectionHead(64, region_size=3)  # the method's trainable window embedding
        >>> loss = loss_fn(f1, f2, embed=embed)  # f1, f2: (12, 64, 48, 48) maps of two intensity views
    """

    def __init__(
        self,
        temperature: float = 0.1,
        region_size: int = 3,
        regions: RegionLayout | int = "all",
        negatives: LocalNegatives = "all",
        strategy: LocalStrategy = "LR",
        *,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"The temperature must be positive, got {temperature}.")
        if region_size < 1:
            raise ValueError(f"region_size (K) must be at least 1, got {region_size}.")
        if isinstance(regions, bool) or not (isinstance(regions, int) or regions in REGION_LAYOUTS):
            raise ValueError(
                f"regions must be one of {', '.join(REGION_LAYOUTS)} or a number of regions, got {regions!r}."
            )
        if isinstance(regions, int) and regions < 1:
            raise ValueError(f"The number of random regions must be at least 1, got {regions}.")
        if negatives not in LOCAL_NEGATIVES:
            raise ValueError(f"negatives must be one of {', '.join(LOCAL_NEGATIVES)}, got {negatives!r}.")
        if strategy not in LOCAL_STRATEGIES:
            raise ValueError(
                f"Unknown local strategy {strategy!r}; choose one of {', '.join(LOCAL_STRATEGIES)}."
            )
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if regions == "grid13" and spatial_dims != 2:
            raise ValueError(
                "The grid13 layout is defined for 2D maps only; use 'all' or a number of regions in 3D."
            )
        self.temperature = float(temperature)
        self.region_size = int(region_size)
        self.regions = regions
        self.negatives = negatives
        self.strategy = strategy
        self.spatial_dims = spatial_dims

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, region_size={self.region_size}, regions={self.regions!r}, "
            f"negatives={self.negatives!r}, strategy={self.strategy!r}"
        )

    def region_positions(
        self, spatial_shape: Sequence[int], generator: torch.Generator | None = None
    ) -> Tensor:
        """Top-left corners of the regions of this call (CPU).

        Args:
            spatial_shape: (H, W) or (H, W, D).
            generator: CPU generator for random regions; None draws from torch's global random state.

        Returns:
            Shape: (R, d) int64.

        Raises:
            ValueError: a map smaller than one window, or more random regions than tiling windows.
        """
        if min(spatial_shape) < self.region_size:
            raise ValueError(
                f"Feature maps {tuple(spatial_shape)} are smaller than one {self.region_size}-wide window."
            )
        if self.regions == "grid13":
            return grid13_positions(spatial_shape, self.region_size)
        tiling = tiling_positions(spatial_shape, self.region_size)  # (R_all, d)
        if self.regions == "all":
            return tiling
        if self.regions > tiling.shape[0]:
            raise ValueError(
                f"Cannot draw {self.regions} distinct regions: a {tuple(spatial_shape)} map holds only "
                f"{tiling.shape[0]} windows of size {self.region_size}."
            )
        chosen = torch.randperm(tiling.shape[0], generator=generator)[: self.regions]  # (n,)
        return tiling[chosen]  # (n, d)

    def negative_regions(self, positions: Tensor) -> Tensor:
        """Which regions u' are negatives of region u (in both views of the same image).

        Args:
            positions: Shape: (R, d).

        Returns:
            Shape: (R, R) bool, False on the diagonal.
        """
        if self.negatives == "neighbours5":
            return nearest_regions(positions, NEIGHBOURS)
        return ~torch.eye(positions.shape[0], dtype=torch.bool, device=positions.device)

    def positive_maps(
        self, batch_size: int, partition_ids: Tensor | None, volume_ids: Tensor | None
    ) -> Tensor:
        """Which feature maps hold a positive of a region of map m (at the same region).

        Map m = view · B + image. L^R: the other view of the same image. L^D: also every map of an image of
        the same partition and another volume.

        Args:
            batch_size: B.
            partition_ids, volume_ids: ids of the B images (L^D only). Shape: (B,) each.

        Returns:
            Shape: (2B, 2B) bool, False on the diagonal.
        """
        device = None if partition_ids is None else partition_ids.device
        image = torch.arange(2 * batch_size, device=device) % batch_size  # (2B,)
        other_view = same_id(image) & ~torch.eye(2 * batch_size, dtype=torch.bool, device=device)  # (2B, 2B)
        if self.strategy == "LR":
            return other_view
        partition, volume = partition_ids.repeat(2), volume_ids.repeat(2)  # (2B,) each
        return other_view | (same_id(partition) & ~same_id(volume))  # (2B, 2B)

    def region_embeddings(
        self, f: Tensor, positions: Tensor, embed: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        """Embed the K-wide window at each position of each map.

        Args:
            f: feature maps. Shape: (M, C, H, W) or (M, C, H, W, D).
            positions: top-left corners, on ``f``'s device. Shape: (R, d).
            embed: maps flattened windows (M, R, C·P), channel-major, to (M, R, D); None: the window mean.

        Returns:
            Shape: (M, R, D), or (M, R, C) without ``embed``.
        """
        m, c, *spatial = f.shape
        k, d = self.region_size, len(spatial)
        offsets = torch.cartesian_prod(*[torch.arange(k, device=f.device)] * d).reshape(-1, d)  # (P, d)
        strides = torch.tensor([math.prod(spatial[i + 1 :]) for i in range(d)], device=f.device)  # (d,)
        pixels = ((positions[:, None, :] + offsets[None]) * strides).sum(-1)  # (R, P) flat pixel indices
        windows = f.flatten(2).index_select(2, pixels.reshape(-1))  # (M, C, R·P)
        windows = windows.view(m, c, positions.shape[0], k**d)  # (M, C, R, P)
        if embed is None:
            return windows.mean(-1).transpose(1, 2)  # (M, R, C)
        flat = windows.permute(0, 2, 1, 3).reshape(m, positions.shape[0], c * k**d)  # (M, R, C·P), C-major
        return embed(flat)  # (M, R, D)

    def forward(
        self,
        f1: Tensor,
        f2: Tensor,
        partition_ids: Tensor | None = None,
        volume_ids: Tensor | None = None,
        *,
        embed: Callable[[Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Local loss of one batch.

        Args:
            f1: feature maps of the first intensity view (after the g2 head). Shape: (B, C, H, W) or
                (B, C, H, W, D).
            f2: feature maps of the second view of the same slices. Shape: as ``f1``.
            partition_ids: partition of each slice; needed by L^D, ignored by L^R. Shape: (B,), int.
            volume_ids: volume of each slice; needed by L^D, ignored by L^R. Shape: (B,), int.
            embed: the trainable window embedding, e.g. a
                :class:`~medcl.models.heads.RegionProjectionHead`: flattened windows (2B, R, C·P) ->
                (2B, R, D). None embeds a window by its mean (D = C).
            generator: CPU generator for random regions (``regions`` = n); None draws from torch's global
                random state.

        Returns:
            Scalar loss: Σ over anchors and their positives of ℓ / (R · 2B).

        Raises:
            ValueError: maps of different or wrong shapes, a map too small for the layout, or
                missing/ill-shaped ids under L^D.
        """
        if f1.shape != f2.shape:
            raise ValueError(
                f"f1 and f2 must have the same shape, got {tuple(f1.shape)} and {tuple(f2.shape)}."
            )
        if f1.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"Expected (B, C, *spatial) maps with {self.spatial_dims} spatial dims, got shape {tuple(f1.shape)}."
            )
        b = f1.shape[0]
        if self.strategy == "LD":
            for name, ids in (("partition_ids", partition_ids), ("volume_ids", volume_ids)):
                if ids is None or tuple(ids.shape) != (b,) or ids.is_floating_point():
                    shape = None if ids is None else tuple(ids.shape)
                    raise ValueError(f"Strategy LD needs integer {name} of shape ({b},), got {shape}.")

        positions = self.region_positions(f1.shape[2:], generator).to(f1.device)  # (R, d)
        r = positions.shape[0]
        v = self.region_embeddings(torch.cat([f1, f2]), positions, embed)  # (M, R, D), M = 2B
        v = F.normalize(v, dim=-1)  # (M, R, D)

        # Negatives: other regions of both views of the anchor's own image, one (2R, 2R) block per image.
        per_image = v.view(2, b, r, -1).transpose(0, 1).reshape(b, 2 * r, -1)  # (B, 2R, D): index view·R + u
        image_logits = per_image @ per_image.transpose(1, 2) / self.temperature  # (B, 2R, 2R)
        negatives = self.negative_regions(positions).repeat(2, 2)  # (2R, 2R)
        negative_lse = masked_logsumexp(image_logits, negatives, dim=-1)  # (B, 2R)
        negative_lse = negative_lse.view(b, 2, r).transpose(0, 1).reshape(2 * b, r).T  # (R, M): anchor (u, m)

        # Positives: region u of the maps chosen by the strategy, one (M, M) block per region.
        per_region = v.transpose(0, 1)  # (R, M, D)
        region_logits = per_region @ per_region.transpose(1, 2) / self.temperature  # (R, M, M)
        positives = self.positive_maps(b, partition_ids, volume_ids).to(f1.device)  # (M, M)
        losses = pair_loss(
            region_logits, negative_lse[:, :, None]
        )  # (R, M, M): ℓ for anchor (u, m), positive m'
        return losses[:, positives].sum() / (r * 2 * b)  # scalar
