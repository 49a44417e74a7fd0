"""Segmentation networks with one forward that can also hand back decoder features.

:func:`build_network` builds a MONAI network (``BasicUNet``, ``UNet`` or ``SwinUNETR``) from plain keyword
arguments (the ``model`` section of the config) and wraps it in :class:`SegNet`. The wrapper has a single
forward entry point, because under ``DistributedDataParallel`` only ``forward`` is synchronised:

* ``net(x)`` returns the logits tensor, exactly what the MONAI network returns (sliding-window inference,
  the supervised method);
* ``net(x, return_features=True)`` returns a :class:`NetOutput` with the logits, the decoder feature maps
  keyed by their downsampling factor (``"scale_1"`` full resolution, ``"scale_2"``, ``"scale_4"``, ...,
  finest first) and the encoder bottleneck ``embedding`` (what contrastive methods project and contrast).

Features are captured by forward hooks registered once on named MONAI submodules; MONAI's code is not
copied or forked. The hooks only write while a feature call is running, so the plain call pays one
attribute check per hooked block and keeps no tensors alive.

Shape letters used below: B batch, C channels, K classes (``out_channels``), S spatial sizes (H, W or
D, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import BasicUNet, SwinUNETR, UNet
from torch import Tensor, nn

from medcl.errors import ConfigError
from medcl.precision import mixed_precision

__all__ = ["ACTIVATIONS", "NETWORK_NAMES", "NORMS", "NetOutput", "SegNet", "build_network"]

NetworkName = Literal["basicunet", "unet", "swinunetr"]
NormName = Literal["instance", "batch"]
ActName = Literal["leakyrelu", "relu", "prelu", "gelu"]

#: Allowed values of ``model.name``.
NETWORK_NAMES: tuple[str, ...] = get_args(NetworkName)
#: Allowed values of ``model.norm``.
NORMS: tuple[str, ...] = get_args(NormName)
#: Allowed values of ``model.act``.
ACTIVATIONS: tuple[str, ...] = get_args(ActName)

# Activation specs for the two convolutional nets, in MONAI's ``(name, kwargs)`` factory form. LeakyReLU
# keeps BasicUNet's own default (slope 0.1, in place); in-place is safe because every activation acts on a
# fresh norm/dropout output that nothing else holds, and the hooked block outputs are never modified later.
_CONV_ACTS: dict[str, tuple[str, dict[str, Any]]] = {
    "leakyrelu": ("leakyrelu", {"negative_slope": 0.1, "inplace": True}),
    "relu": ("relu", {"inplace": True}),
    "prelu": ("prelu", {}),
    "gelu": ("gelu", {}),
}

# Norm specs per network. Each keeps the MONAI network's own default for "instance": BasicUNet uses an
# affine instance norm, UNet and SwinUNETR a non-affine one.
_NORMS: dict[str, dict[str, str | tuple[str, dict[str, Any]]]] = {
    "basicunet": {"instance": ("instance", {"affine": True}), "batch": "batch"},
    "unet": {"instance": "instance", "batch": "batch"},
    "swinunetr": {"instance": "instance", "batch": "batch"},
}

# Readable network names for error messages.
_LABELS = {"basicunet": "BasicUNet", "unet": "UNet", "swinunetr": "SwinUNETR"}


@dataclass
class NetOutput:
    """What ``SegNet(x, return_features=True)`` returns.

    A dataclass, so ``DistributedDataParallel`` finds every tensor in it when it looks for unused
    parameters.

    Attributes:
        logits: The segmentation logits, identical to the plain forward's result.
            Shape: ``(B, K, *S)``.
        features: Decoder feature maps keyed ``"scale_<k>"`` where ``k`` is the input size divided by the
            map size along the first spatial axis; ordered finest first. Shape of ``"scale_k"``:
            ``(B, C_k, *S // k)``.
        embedding: The encoder bottleneck map (deepest encoder output, before the decoder).
            Shape: ``(B, C_e, *S // f)`` with ``f`` the network's total downsampling factor.
    """

    logits: Tensor
    features: dict[str, Tensor]
    embedding: Tensor

    @property
    def finest(self) -> Tensor:
        """The highest-resolution decoder map (``scale_1`` for BasicUNet/SwinUNETR, ``scale_2`` for UNet)."""
        return next(iter(self.features.values()))


class _Recorder:
    """Per-network capture state shared by that network's hooks.

    The hooks hold this object, never the :class:`SegNet` or a closure, so ``copy.deepcopy`` (an EMA
    teacher) gives the copy its own recorder and ``torch.save``/pickle of the bare ``net`` works.
    """

    def __init__(self) -> None:
        """Start inactive with an empty store."""
        # True only while a ``return_features=True`` call runs.
        self.active = False
        # Filled by the hooks during a feature call; swapped for a fresh dict at its end.
        self.store: dict[str, Tensor] = {}


class _CaptureHook:
    """A forward hook that stores its module's output under ``key`` while the recorder is active."""

    def __init__(self, recorder: _Recorder, key: str) -> None:
        """Remember where to write.

        Args:
            recorder: The owning network's capture state.
            key: Name of the hooked submodule inside the MONAI network.
        """
        self.recorder = recorder
        self.key = key

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        """Store ``output`` when capturing; otherwise do nothing (the fast path's only cost)."""
        if self.recorder.active:
            # Keep the graph: feature losses must reach the encoder.
            self.recorder.store[self.key] = output


class SegNet(nn.Module):
    """A MONAI segmentation network whose forward can also return decoder features and the bottleneck.

    Build it with :func:`build_network`; the constructor takes the hook points explicitly so that the
    wrapper stays architecture independent (scale keys are computed from shapes at run time).

    Args:
        net: The MONAI network; kept as ``self.net`` so it can be exported or logged on its own.
        name: The network's name in the config (one of :data:`NETWORK_NAMES`).
        spatial_dims: 2 or 3.
        in_channels: Number of input channels.
        out_channels: Number of output channels (classes, background included).
        decoder_layers: Names (as in ``net.named_modules()``) of the submodules whose outputs are the
            decoder feature maps, in any order.
        embedding_layer: Name of the submodule whose output is the encoder bottleneck.
        size_divisor: The network's total downsampling factor (16, ``prod(strides)``, 32).
        needs_divisible: Whether every spatial size must be a multiple of ``size_divisor`` (UNet and
            SwinUNETR; BasicUNet pads odd sizes itself).
        instance_norm: Whether the net uses instance norm, which needs at least 2 voxels at the
            bottleneck.

    Example:
        >>> net = build_network("basicunet", spatial_dims=2, in_channels=1, out_channels=3)
        >>> net(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        decoder_layers: Sequence[str],
        embedding_layer: str,
        size_divisor: int,
        needs_divisible: bool,
        instance_norm: bool,
    ) -> None:
        """Wrap ``net`` and register the capture hooks once."""
        super().__init__()
        # The bare MONAI module: torch.export and MLflow log this, not the wrapper.
        self.net = net
        self.name = name
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        # Public so callers can check a patch or ROI size before the first step (check_spatial_shape).
        self.size_divisor = size_divisor
        self.needs_divisible = needs_divisible
        self.instance_norm = instance_norm
        # Hook points by their name in ``net``; the scale of each is read from shapes, not assumed here.
        self._decoder_layers = tuple(decoder_layers)
        self._embedding_layer = embedding_layer
        # Capture state for this network only (a deepcopied teacher gets its own).
        self._recorder = _Recorder()
        # Filled lazily by feature_channels(); the architecture never changes, so it stays valid.
        self._feature_channels: dict[str, int] | None = None
        # Register once: the hooks live as long as the network and idle until a feature call.
        modules = dict(net.named_modules())
        for key in (*self._decoder_layers, embedding_layer):
            if key not in modules:
                raise ValueError(f"{_LABELS.get(name, name)} has no submodule named {key!r} to hook.")
            modules[key].register_forward_hook(_CaptureHook(self._recorder, key))

    def check_spatial_shape(self, spatial_shape: Sequence[int]) -> None:
        """Raise if the network cannot take an input of this spatial size.

        Call it early (e.g. on the configured patch size) to fail before training starts; ``forward`` calls
        it on every input too.

        Args:
            spatial_shape: The input's spatial sizes, e.g. ``(96, 96, 96)``.

        Raises:
            ValueError: When the number of sizes is not ``spatial_dims``.
            ConfigError: When a size is not a multiple of (or is below) the network's downsampling factor,
                or instance norm would see a single bottleneck voxel.
        """
        # Plain ints, so a torch.Size, a list from the config or a tuple all work.
        shape = tuple(int(s) for s in spatial_shape)
        if len(shape) != self.spatial_dims:
            raise ValueError(
                f"{_LABELS[self.name]} was built for {self.spatial_dims}D inputs; got spatial shape {shape}."
            )
        # The suggestion is always a valid size: 2 and 3 bottleneck voxels per axis.
        d = self.size_divisor
        hint = f"use a patch size like {2 * d} or {3 * d}"
        # UNet's transposed convs and Swin's patch merging cannot pad odd sizes back, so the cat would fail.
        if self.needs_divisible and any(s % d for s in shape):
            raise ConfigError(
                f"{_LABELS[self.name]} needs every spatial size divisible by {d}; got {shape}: {hint}."
            )
        # Below the factor an axis pools away to nothing (BasicUNet's only constraint).
        if any(s < d for s in shape):
            raise ConfigError(
                f"{_LABELS[self.name]} needs every spatial size to be at least {d}; got {shape}: {hint}."
            )
        # Instance norm normalises over space, which fails on a 1-voxel bottleneck (e.g. 32x32 for Swin).
        if self.instance_norm and math.prod(s // d for s in shape) < 2:
            raise ConfigError(
                f"{_LABELS[self.name]} with instance norm needs at least 2 voxels at its 1/{d} bottleneck; "
                f"got {shape}: {hint}."
            )

    @mixed_precision
    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | NetOutput:
        """Run the network; optionally also return decoder features and the bottleneck.

        Args:
            x: The input image batch. Shape: ``(B, in_channels, *S)``.
            return_features: False (fast path) returns the logits tensor only; True returns a
                :class:`NetOutput`.

        Returns:
            The logits ``(B, K, *S)``, or a :class:`NetOutput` holding them plus ``features`` and
            ``embedding`` when ``return_features`` is True.

        Raises:
            ConfigError: When the spatial size does not suit the network (see :meth:`check_spatial_shape`).
        """
        # x: (B, in_channels, *S); checked first so MONAI's deep stack trace never shows up.
        self.check_spatial_shape(x.shape[2:])
        if not return_features:
            # (B, K, *S), straight from MONAI; the hooks see active=False and write nothing.
            return self.net(x)
        # Only this flag turns the hooks on; no hook is added or removed per call.
        self._recorder.active = True
        try:
            # (B, K, *S); the hooks fill the recorder's store on the way.
            logits = self.net(x)
        finally:
            # A fresh store per call: tensors from an earlier call (student vs teacher) stay intact.
            captured = self._recorder.store
            self._recorder.store = {}
            self._recorder.active = False
        # Key every decoder map by its downsampling factor along the first spatial axis.
        by_scale: dict[int, Tensor] = {}
        for layer in self._decoder_layers:
            # (B, C_k, *S // k)
            fmap = captured[layer]
            scale = x.shape[2] // fmap.shape[2]
            if scale in by_scale:
                raise RuntimeError(f"Two decoder maps of {_LABELS[self.name]} share the scale 1/{scale}.")
            by_scale[scale] = fmap
        # Finest (smallest factor) first, so iteration order is resolution order.
        features = {f"scale_{s}": by_scale[s] for s in sorted(by_scale)}
        # embedding: (B, C_e, *S // size_divisor)
        return NetOutput(logits=logits, features=features, embedding=captured[self._embedding_layer])

    def feature_channels(self) -> dict[str, int]:
        """Channel count of every feature scale and of ``"embedding"``.

        Computed once by a dry forward on a tiny zero input of a valid size, in eval mode under
        ``no_grad`` (so BatchNorm running statistics do not move), on the device and dtype of the
        parameters (so it also works after ``.cuda()``); each submodule's train/eval flag is restored.

        Returns:
            E.g. ``{"scale_1": 32, "scale_2": 32, "scale_4": 64, "scale_8": 128, "embedding": 256}``.
        """
        if self._feature_channels is None:
            # Follow the parameters' device and dtype: the network may already sit on a GPU.
            param = next(self.parameters())
            d = self.size_divisor
            # Smallest valid probe: one bottleneck voxel per axis, two along the last (instance norm).
            probe = (d,) * (self.spatial_dims - 1) + (2 * d,)
            x = torch.zeros((1, self.in_channels, *probe), device=param.device, dtype=param.dtype)
            # Per-module flags, so a deliberately frozen (eval) block stays frozen afterwards.
            modes = {m: m.training for m in self.modules()}
            # Eval: BatchNorm uses (and does not update) its running stats, dropout is off.
            self.eval()
            try:
                with torch.no_grad():
                    out = self.forward(x, return_features=True)
            finally:
                for module, training in modes.items():
                    module.training = training
            # Channels only: spatial sizes depend on the input, channel counts never do.
            assert isinstance(out, NetOutput)
            channels = {key: int(fmap.shape[1]) for key, fmap in out.features.items()}
            channels["embedding"] = int(out.embedding.shape[1])
            self._feature_channels = channels
        return dict(self._feature_channels)


def _check_choice(key: str, value: object, allowed: Sequence[str]) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"model.{key} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")


def _check_ints(
    key: str, values: Sequence[int], lengths: Sequence[int], why: str, minimum: int = 1
) -> tuple[int, ...]:
    """Return ``values`` as a tuple after checking its length and that every entry is an int >= minimum."""
    # Config lists arrive as lists; MONAI and the error messages want tuples/lists of plain ints.
    values = tuple(values)
    if len(values) not in lengths:
        n = " or ".join(map(str, lengths))
        raise ConfigError(f"model.{key} must have {n} values {why}; got {len(values)}: {list(values)}.")
    # bool is an int subclass; a stray true/false in YAML should not pass as a width of 1.
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values):
        raise ConfigError(f"model.{key} must hold integers of at least {minimum}; got {list(values)}.")
    return values


def _unet_levels(net: UNet) -> tuple[list[str], str]:
    """Find the up block of every level and the bottom block of a MONAI ``UNet``.

    MONAI nests the levels as ``Sequential(down, SkipConnection(<next level>), up)`` with the bottom block
    as the innermost ``SkipConnection``'s submodule.

    Returns:
        The up-block names from the top level down, and the bottom block's name.
    """
    # Hooks are registered by name, so map each block back to its dotted path.
    names = {module: name for name, module in net.named_modules()}
    ups: list[str] = []
    level: nn.Module = net.model
    while True:
        # Every level is (down, SkipConnection(sub), up).
        _down, skip, up = level  # type: ignore[misc]
        ups.append(names[up])
        assert isinstance(skip, SkipConnection)
        sub = skip.submodule
        # A deeper level looks like this one again; anything else is the bottom block (the bottleneck).
        if isinstance(sub, nn.Sequential) and len(sub) == 3 and isinstance(sub[1], SkipConnection):
            level = sub
        else:
            return ups, names[sub]


def build_network(
    name: NetworkName,
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    strides: Sequence[int] | None = None,
    num_res_units: int = 2,
    norm: NormName = "instance",
    act: ActName = "leakyrelu",
    dropout: float = 0.0,
    feature_size: int = 24,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
) -> SegNet:
    """Build a MONAI segmentation network wrapped in :class:`SegNet`.

    Takes the ``model`` config section as keyword arguments (``build_network(**cfg.model.model_dump())``);
    keys a network does not use are ignored, except ``strides``, which only ``unet`` accepts.

    Feature maps per network (defaults, 2D; the embedding is the bottleneck):

    * ``basicunet``: ``upcat_4..upcat_1`` give ``scale_1: 32, scale_2: 32, scale_4: 64, scale_8: 128``;
      ``down_4`` gives ``embedding: 256`` at 1/16.
    * ``unet``: the up block of every level but the top (whose output *is* the logits, so it is no
      feature) gives ``scale_2: 32, scale_4: 32, scale_8: 64``; the bottom block gives ``embedding: 256``
      at 1/16. There is no ``scale_1`` unless ``strides[0] == 1``.
    * ``swinunetr``: ``decoder1..decoder5`` give ``scale_1: 24, scale_2: 24, scale_4: 48, scale_8: 96,
      scale_16: 192``; ``encoder10`` gives ``embedding: 384`` at 1/32.

    Args:
        name: ``"basicunet"`` (MONAI ``BasicUNet``, a plain 2-conv U-Net: a good default),
            ``"unet"`` (MONAI ``UNet`` with residual units) or ``"swinunetr"`` (MONAI ``SwinUNETR``,
            a Swin transformer encoder: more memory, patch sizes must be multiples of 32).
        spatial_dims: 2 or 3.
        in_channels: Number of image channels (modalities).
        out_channels: Number of classes, background included.
        features: ``basicunet``: the six BasicUNet ``features`` (five encoder widths, then the last decoder
            width). ``unet``: the first five are the ``channels`` of each level (a sixth is ignored so one
            default serves both). Halve them if memory runs out. Ignored by ``swinunetr``.
        strides: ``unet`` only: the downsampling stride of each of the 4 levels, default ``(2, 2, 2, 2)``.
            Only the first may be 1 (then the decoder gains a full-resolution ``scale_1`` map).
        num_res_units: ``unet`` only: residual units per block (0 gives plain convolutions).
        norm: ``"instance"`` (default; each network's MONAI default: affine for BasicUNet, non-affine for
            UNet and SwinUNETR) or ``"batch"`` (only with batches of 2 or more).
        act: ``"leakyrelu"`` (slope 0.1, in place), ``"relu"``, ``"prelu"`` or ``"gelu"``. SwinUNETR fixes
            LeakyReLU in its convolution blocks, so it accepts only ``"leakyrelu"``.
        dropout: Dropout probability in ``[0, 1)``; the transformer's ``drop_rate`` for ``swinunetr``.
            Raise it (0.1 to 0.2) when a small labelled set overfits.
        feature_size: ``swinunetr`` only: embedding width, a multiple of 12 (12, 24, 48). Use 48 with
            pretrained Swin weights, 12 for quick tests.
        depths: ``swinunetr`` only: Swin blocks in each of the 4 stages.
        num_heads: ``swinunetr`` only: attention heads in each of the 4 stages; stage ``i`` width
            ``feature_size * 2**i`` must be divisible by ``num_heads[i]``.

    Returns:
        The wrapped network.

    Raises:
        ConfigError: On an unknown name, norm or act, a spatial_dims other than 2 or 3, a wrong number of
            features/strides/depths/num_heads, a feature_size not divisible by 12, or a dropout outside
            ``[0, 1)``; the message names the ``model.<key>`` and the allowed values.

    Example:
        >>> net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=2)
        >>> out = net(torch.zeros(1, 1, 32, 32, 32), return_features=True)
        >>> list(out.features), tuple(out.embedding.shape)
        (['scale_2', 'scale_4', 'scale_8'], (1, 256, 2, 2, 2))
    """
    # Settings shared by every network, checked before anything is built.
    _check_choice("name", name, NETWORK_NAMES)
    _check_choice("norm", norm, NORMS)
    _check_choice("act", act, ACTIVATIONS)
    if spatial_dims not in (2, 3):
        raise ConfigError(f"model.spatial_dims must be 2 or 3; got {spatial_dims!r}.")
    for key, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"model.{key} must be a positive integer; got {value!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), e.g. 0.0 or 0.1; got {dropout!r}.")
    if strides is not None and name != "unet":
        raise ConfigError(
            f"model.strides is used by 'unet' only; remove it for {name!r} (got {list(strides)})."
        )
    # The arguments every MONAI net and the wrapper share.
    common = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels}
    # The norm in the form this particular MONAI net expects.
    norm_spec = _NORMS[name][norm]

    if name == "basicunet":
        fea = _check_ints(
            "features", features, (6,), "for basicunet (five encoder widths, one decoder width)"
        )
        net: nn.Module = BasicUNet(
            **common, features=fea, act=_CONV_ACTS[act], norm=norm_spec, dropout=dropout
        )
        # Four max-pools: the bottleneck is at 1/16; odd sizes are padded by MONAI itself.
        decoder, embedding, divisor, divisible = (
            ["upcat_4", "upcat_3", "upcat_2", "upcat_1"],
            "down_4",
            16,
            False,
        )

    elif name == "unet":
        channels = _check_ints(
            "features", features, (5, 6), "for unet (the first five are the level widths)"
        )[:5]
        # MONAI's UNet has no default strides; halve the size at every level.
        if strides is None:
            strides = (2,) * (len(channels) - 1)
        steps = _check_ints("strides", strides, (len(channels) - 1,), "for unet (one per downsampling level)")
        # A stride of 1 below the top would give two decoder maps the same scale key.
        if any(s < 2 for s in steps[1:]):
            raise ConfigError(f"model.strides may have 1 only as its first value; got {list(steps)}.")
        if not isinstance(num_res_units, int) or num_res_units < 0:
            raise ConfigError(f"model.num_res_units must be an integer of at least 0; got {num_res_units!r}.")
        # The activation/norm specs are MONAI factory tuples, the same ones BasicUNet takes.
        net = UNet(
            **common,
            channels=channels,
            strides=steps,
            num_res_units=num_res_units,
            act=_CONV_ACTS[act],
            norm=norm_spec,
            dropout=dropout,
        )
        ups, embedding = _unet_levels(net)
        # The top up block ends in a bare conv (MONAI's conv_only / last_conv_only, whatever num_res_units)
        # whose output IS the logits (K channels), so it is no feature: the finest map is at 1/strides[0].
        decoder, divisor, divisible = ups[1:], math.prod(steps), True

    else:
        if not isinstance(feature_size, int) or feature_size < 12 or feature_size % 12:
            raise ConfigError(
                f"model.feature_size must be a positive multiple of 12 for swinunetr (e.g. 12, 24, 48); "
                f"got {feature_size!r}."
            )
        # UnetrBasicBlock/UnetrUpBlock hard-code LeakyReLU; refuse a setting that would silently not apply.
        if act != "leakyrelu":
            raise ConfigError(f"model.act must be 'leakyrelu' for swinunetr (MONAI fixes it); got {act!r}.")
        stages = _check_ints("depths", depths, (4,), "for swinunetr (one per Swin stage)")
        heads = _check_ints("num_heads", num_heads, (4,), "for swinunetr (one per Swin stage)")
        # Stage i works at width feature_size * 2**i, which the heads must split evenly.
        for i, h in enumerate(heads):
            if (feature_size * 2**i) % h:
                raise ConfigError(
                    f"model.num_heads[{i}] = {h} must divide the stage width {feature_size * 2**i} "
                    f"(model.feature_size * 2**{i}); got num_heads {list(heads)}."
                )
        # No img_size in MONAI >= 1.5: the input size is checked per call instead (check_spatial_shape).
        net = SwinUNETR(
            **common,
            feature_size=feature_size,
            depths=stages,
            num_heads=heads,
            norm_name=norm_spec,
            drop_rate=dropout,
        )
        # Patch embedding (1/2) plus four merges: the bottleneck is at 1/32.
        decoder = ["decoder5", "decoder4", "decoder3", "decoder2", "decoder1"]
        embedding, divisor, divisible = "encoder10", 32, True

    # One wrapper for all three: only the hook points and the size rules differ.
    return SegNet(
        net,
        name=name,
        **common,
        decoder_layers=decoder,
        embedding_layer=embedding,
        size_divisor=divisor,
        needs_divisible=divisible,
        instance_norm=norm == "instance",
    )
