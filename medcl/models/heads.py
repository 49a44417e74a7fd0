"""Projection heads: ``g1`` (global) and ``g2`` (local) of Chaitanya et al. [0]; MCSC's pixel projector [2].

* :class:`GlobalProjectionHead` maps the encoder bottleneck of an image to one vector ``z`` that the global
  contrastive loss compares across images.
* :class:`LocalProjectionHead` maps a decoder feature map to a feature map of the same size, whose local
  regions the local contrastive loss compares between two intensity-augmented views.
* :class:`RegionProjectionHead` embeds each of those local regions (a flattened K x K window of the g2 map)
  with one shared linear layer; the local loss hands it the windows (``embed=``).

These heads are used in pre-training only and dropped before fine-tuning. None normalises its output:
the contrastive losses L2-normalise before taking cosine similarities.

Shape letters: B batch, C channels, S spatial sizes (H, W or D, H, W), D the projection size.

- [0] Chaitanya, Erdil, Karani, Konukoglu. Contrastive learning of global and local features for medical
  image segmentation with limited annotations. NeurIPS 2020. https://arxiv.org/abs/2006.10511
- [1] The authors' TensorFlow code, ``krishnabits001/domain_specific_cl`` @ e5aae80, ``models.py``
  (``encoder_pretrain_net`` for g1, ``decoder_pretrain_net`` for g2): read for the layer sizes and the
  bias/normalisation choices; no code is taken from it.
- [2] Liu, Gu, Henderson, Deligianni. Multi-scale cross contrastive learning for semi-supervised medical
  image segmentation. BMVC 2023. https://arxiv.org/abs/2306.14293
"""

from __future__ import annotations

from monai.networks.layers import Conv, Norm, Pool
from torch import Tensor, nn

from medcl.precision import mixed_precision

__all__ = ["GlobalProjectionHead", "LocalProjectionHead", "PixelProjectionHead", "RegionProjectionHead"]


def _check_positive(name: str, value: object) -> None:
    """Raise ValueError unless ``value`` is a positive int (bools excluded)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")


class GlobalProjectionHead(nn.Module):
    """The global head g1: average-pool to a ``grid`` map, flatten, FC ``hidden`` + ReLU, FC ``out``, no biases.

    The paper's Figure 1 caption: "Sketch of global contrastive loss used for pre-training the encoder e
    with dense layers g1." [0]. The layer sizes and the missing biases are those of the authors' code
    (flatten -> FC 1024 with ReLU, no bias -> FC 128, no bias) [1].

    Deviation from [0]/[1]: the authors flatten a bottleneck of fixed size (6 x 6 x 128 for their 192 x 192
    slices), so the first FC layer's width depends on the input size. Our encoders are MONAI networks that
    take any valid patch size, so the bottleneck is first average-pooled to a fixed ``grid`` x ``grid`` map
    (adaptive average pooling) and then flattened: the head is independent of the patch size and keeps
    the coarse spatial layout. ``grid=1`` is a global average pool (SimCLR's choice on a ResNet) and should
    not be used with instance-normalised encoders (MONAI's default): instance norm sets every channel's
    spatial mean to the same learned shift for every image, so the pooled vectors of all images are nearly
    identical (mean pairwise cosine 0.998 on ACDC slices with a random BasicUNet, against 0.60 with
    ``grid=4``) and the global loss starts, and stays, collapsed.

    Args:
        in_channels: Channels ``C`` of the encoder bottleneck, e.g. ``net.feature_channels()["embedding"]``.
        hidden: Width of the hidden FC layer (1024 in [1]).
        out: Size ``D`` of the projection ``z`` (128 in [1]).
        grid: Side of the pooled map; the first FC layer takes ``C * grid**spatial_dims`` inputs.
        spatial_dims: 2 for slices, 3 for volumes.

    Shape:
        - Input: ``(B, C, *S)`` with ``len(S) == spatial_dims``.
        - Output: ``(B, D)``, not normalised.

    Raises:
        ValueError: When a size is not a positive integer or ``spatial_dims`` is not 2 or 3, or (in
            ``forward``) when the input does not have ``spatial_dims`` spatial axes and ``C`` channels.

    Example:
        >>> head = GlobalProjectionHead(256, grid=4)
        >>> head(torch.randn(4, 256, 8, 8)).shape
        torch.Size([4, 128])
    """

    def __init__(
        self, in_channels: int, hidden: int = 1024, out: int = 128, grid: int = 4, spatial_dims: int = 2
    ) -> None:
        """Build the pooling and the two bias-free linear layers."""
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden", hidden), ("out", out), ("grid", grid)):
            _check_positive(name, value)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}.")
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](grid)
        # Bias-free, as in [1], so parameter counts and behaviour match the reference head.
        self.mlp = nn.Sequential(
            nn.Linear(in_channels * grid**spatial_dims, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Project a batch of bottleneck maps to vectors.

        Args:
            x: Encoder bottleneck. Shape: ``(B, C, *S)``.

        Returns:
            The projections ``z``. Shape: ``(B, D)``.
        """
        if x.ndim != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
            raise ValueError(
                f"GlobalProjectionHead expects a (B, {self.in_channels}, *spatial) bottleneck map with "
                f"{self.spatial_dims} spatial axes; got shape {tuple(x.shape)}."
            )
        # (B, C, *S) -> (B, C, grid, grid[, grid]) -> (B, C * grid**d) -> (B, hidden) -> (B, D)
        return self.mlp(self.pool(x).flatten(1))


class LocalProjectionHead(nn.Module):
    """The local head g2: 1x1 conv C->C + batch norm + ReLU, then a linear 1x1 conv C->C.

    The paper's Figure 1 caption: "Sketch of local contrastive loss used for pre-training the decoder d_l
    with 1 x 1 convolutional layers g2, with frozen weights of encoder e obtained from the previous training
    stage." [0]. As in the authors' code [1], both convolutions keep the channel count and have no bias
    (the first one's bias would be cancelled by the batch norm; the second is linear).

    Args:
        channels: Channels ``C`` of the decoder map, e.g. ``net.feature_channels()["scale_4"]``.
        spatial_dims: 2 for slices, 3 for volumes.

    Shape:
        - Input: ``(B, C, *S)`` with ``len(S) == spatial_dims``.
        - Output: ``(B, C, *S)``, same size, not normalised.

    Raises:
        ValueError: When ``channels`` is not a positive integer or ``spatial_dims`` is not 2 or 3, or (in
            ``forward``) when the input does not have ``spatial_dims`` spatial axes and ``C`` channels.

    Example:
        >>> head = LocalProjectionHead(64)
        >>> head(torch.randn(4, 64, 48, 48)).shape
        torch.Size([4, 64, 48, 48])
    """

    def __init__(self, channels: int, spatial_dims: int = 2) -> None:
        """Build the two 1x1 convolutions and the batch norm between them."""
        super().__init__()
        _check_positive("channels", channels)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}.")
        self.channels = channels
        self.spatial_dims = spatial_dims
        # MONAI's factories give Conv2d/Conv3d and BatchNorm2d/3d from the dimension.
        conv = Conv[Conv.CONV, spatial_dims]
        norm = Norm[Norm.BATCH, spatial_dims]
        self.block = nn.Sequential(
            conv(channels, channels, kernel_size=1, bias=False),
            norm(channels),
            nn.ReLU(inplace=True),
            conv(channels, channels, kernel_size=1, bias=False),
        )

    @mixed_precision
    def forward(self, x: Tensor) -> Tensor:
        """Project a decoder feature map position by position.

        Args:
            x: Decoder feature map. Shape: ``(B, C, *S)``.

        Returns:
            The projected map. Shape: ``(B, C, *S)``.
        """
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"LocalProjectionHead expects a (B, {self.channels}, *spatial) map with {self.spatial_dims} "
                f"spatial axes; got shape {tuple(x.shape)}."
            )
        # (B, C, *S) -> (B, C, *S): every position is mapped independently (1x1 kernels).
        return self.block(x)


class RegionProjectionHead(nn.Module):
    """The embedding v_u of a local region: one shared bias-free linear layer on the flattened window.

    The authors' code [1] flattens each K x K window of the g2 map and maps it to 128 values with a dense
    layer without bias, shared by every region and image; the local contrastive loss
    (:class:`medcl.losses.local_contrast.LocalContrastiveLoss`) cuts the windows and calls this head on them
    (its ``embed`` argument), so the loss holds no parameters. The layer runs in float32, as the loss does
    (no ``mixed_precision``): its outputs go straight into a temperature-scaled softmax.

    Args:
        in_channels: Channels ``C`` of the feature map the windows are cut from.
        region_size: Window side ``K``; a window holds ``P = K**spatial_dims`` pixels.
        out: Embedding size ``D`` (128 in [1]).
        spatial_dims: 2 for slices, 3 for volumes.

    Shape:
        - Input: ``(..., C * P)``: windows flattened channel-major (all pixels of channel 0, then channel 1...).
        - Output: ``(..., D)``, not normalised.

    Raises:
        ValueError: When a size is not a positive integer or ``spatial_dims`` is not 2 or 3, or (in
            ``forward``) when the last axis is not ``C * P`` long.

    Example:
        >>> head = RegionProjectionHead(64, region_size=3)
        >>> head(torch.randn(12, 13, 64 * 9)).shape
        torch.Size([12, 13, 128])
    """

    def __init__(self, in_channels: int, region_size: int = 3, out: int = 128, spatial_dims: int = 2) -> None:
        """Build the bias-free linear layer."""
        super().__init__()
        for name, value in (("in_channels", in_channels), ("region_size", region_size), ("out", out)):
            _check_positive(name, value)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}.")
        self.in_channels = in_channels
        self.window = in_channels * region_size**spatial_dims  # C * P
        self.linear = nn.Linear(self.window, out, bias=False)

    def forward(self, windows: Tensor) -> Tensor:
        """Embed flattened windows.

        Args:
            windows: Shape: ``(..., C * P)``.

        Returns:
            The region embeddings. Shape: ``(..., D)``.
        """
        if windows.shape[-1] != self.window:
            raise ValueError(
                f"RegionProjectionHead expects windows of {self.window} values (C = {self.in_channels} channels "
                f"x K^d pixels) on the last axis; got shape {tuple(windows.shape)}."
            )
        return self.linear(windows)  # (..., C·P) -> (..., D)


class PixelProjectionHead(nn.Module):
    """MCSC's projector for one scale: a 1x1 conv per source network, ReLU, then one shared 1x1 conv [2].

    In the authors' code each network has its own first layer (CNN 16->256, Swin 96->256 at the fine scale)
    and both share the last one (256->128), so the two networks' pixels land in one embedding space where
    they are contrasted together. A 1x1 convolution is a linear map applied at every position, so the head
    works on channel-last vectors: either whole maps moved to channel-last, or only the pixels a sampler
    picked (which skips the projection of pixels that never enter the loss). The output is not normalised;
    the loss L2-normalises each pixel embedding.

    Args:
        in_channels: Channels of each source's feature map, e.g. ``(16, 48)`` for (CNN, Transformer).
        hidden: Width of the per-source first layer (256 in [2]).
        out: Embedding size ``D`` (128 in [2]).

    Shape:
        - Input: ``(..., C_s)`` channel-last vectors of source ``s``.
        - Output: ``(..., D)``.

    Raises:
        ValueError: When a size is not a positive integer, or (in ``forward``) on an unknown source or a
            wrong channel count.

    Example:
        >>> head = PixelProjectionHead((16, 48), hidden=64, out=32)
        >>> head(torch.randn(2, 100, 48), source=1).shape
        torch.Size([2, 100, 32])
    """

    def __init__(self, in_channels: tuple[int, ...] | list[int], hidden: int = 256, out: int = 128) -> None:
        """Build one first layer per source and the shared last layer."""
        super().__init__()
        for i, c in enumerate(in_channels):
            _check_positive(f"in_channels[{i}]", c)
        _check_positive("hidden", hidden)
        _check_positive("out", out)
        self.in_channels = tuple(in_channels)
        # One first layer per network: their decoder widths differ.
        self.first = nn.ModuleList(nn.Linear(c, hidden) for c in self.in_channels)
        self.act = nn.ReLU(inplace=True)
        # Shared by every source: one embedding space for both networks.
        self.last = nn.Linear(hidden, out)

    @mixed_precision
    def forward(self, x: Tensor, source: int) -> Tensor:
        """Project channel-last vectors of one source.

        Args:
            x: Feature vectors. Shape: ``(..., C_source)``.
            source: Index of the network the vectors come from (0-based, as in ``in_channels``).

        Returns:
            The embeddings (not normalised). Shape: ``(..., D)``.
        """
        if not 0 <= source < len(self.first):
            raise ValueError(f"source must be in [0, {len(self.first)}); got {source}.")
        if x.shape[-1] != self.in_channels[source]:
            raise ValueError(
                f"PixelProjectionHead source {source} expects {self.in_channels[source]} channels last; "
                f"got shape {tuple(x.shape)}."
            )
        # (..., C_s) -> (..., hidden) -> (..., D)
        return self.last(self.act(self.first[source](x)))
