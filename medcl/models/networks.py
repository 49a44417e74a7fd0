"""Build a MONAI segmentation network (``BasicUNet``, ``UNet`` or ``SwinUNETR``) from the ``model`` config.

:func:`build_network` takes plain keyword arguments (the ``model`` section of the config), checks the
settings every network shares, hands the rest to the builder of the network family (one small function per
family in ``_BUILDERS``) and wraps the result in :class:`~medcl.models.segnet.SegNet`, whose single forward
also hands back decoder features and the bottleneck (:class:`~medcl.models.segnet.NetOutput`). A builder
returns the MONAI module plus what the wrapper needs to know about it: the submodules to hook and the size
rules.

Shape letters used below: B batch, C channels, K classes (``out_channels``), S spatial sizes (H, W or
D, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import BasicUNet, SwinUNETR, UNet
from torch import nn

from medcl.errors import ConfigError
from medcl.models.segnet import NetOutput, SegNet

# NetOutput and SegNet are defined in medcl.models.segnet and importable from here too.
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


@dataclass(frozen=True)
class _Built:
    """What a family builder returns: the MONAI network and where :class:`SegNet` hooks it.

    Attributes:
        net: The MONAI network.
        decoder_layers: Names of the submodules whose outputs are the decoder feature maps.
        embedding_layer: Name of the submodule whose output is the encoder bottleneck.
        size_divisor: The network's total downsampling factor.
        needs_divisible: Whether every spatial size must be a multiple of ``size_divisor``.
    """

    net: nn.Module
    decoder_layers: list[str]
    embedding_layer: str
    size_divisor: int
    needs_divisible: bool


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


def _build_basicunet(
    common: dict[str, int], norm_spec: Any, *, features: Sequence[int], act: str, dropout: float, **_: Any
) -> _Built:
    """MONAI ``BasicUNet`` (a plain 2-conv U-Net); see :func:`build_network` for the arguments."""
    fea = _check_ints("features", features, (6,), "for basicunet (five encoder widths, one decoder width)")
    net = BasicUNet(**common, features=fea, act=_CONV_ACTS[act], norm=norm_spec, dropout=dropout)
    # Four max-pools: the bottleneck is at 1/16; odd sizes are padded by MONAI itself.
    return _Built(net, ["upcat_4", "upcat_3", "upcat_2", "upcat_1"], "down_4", 16, False)


def _build_unet(
    common: dict[str, int],
    norm_spec: Any,
    *,
    features: Sequence[int],
    strides: Sequence[int] | None,
    num_res_units: int,
    act: str,
    dropout: float,
    **_: Any,
) -> _Built:
    """MONAI ``UNet`` with residual units; see :func:`build_network` for the arguments."""
    channels = _check_ints("features", features, (5, 6), "for unet (the first five are the level widths)")[:5]
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
    return _Built(net, ups[1:], embedding, math.prod(steps), True)


def _build_swinunetr(
    common: dict[str, int],
    norm_spec: Any,
    *,
    feature_size: int,
    act: str,
    depths: Sequence[int],
    num_heads: Sequence[int],
    dropout: float,
    **_: Any,
) -> _Built:
    """MONAI ``SwinUNETR`` (a Swin transformer encoder); see :func:`build_network` for the arguments."""
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
    return _Built(net, ["decoder5", "decoder4", "decoder3", "decoder2", "decoder1"], "encoder10", 32, True)


# One builder per network family (keys: NETWORK_NAMES); each checks its own keys and ignores the others.
_BUILDERS: dict[str, Callable[..., _Built]] = {
    "basicunet": _build_basicunet,
    "unet": _build_unet,
    "swinunetr": _build_swinunetr,
}


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
    # The family's own keys are checked by its builder; keys a family does not use are ignored.
    built = _BUILDERS[name](
        common,
        norm_spec,
        features=features,
        strides=strides,
        num_res_units=num_res_units,
        act=act,
        dropout=dropout,
        feature_size=feature_size,
        depths=depths,
        num_heads=num_heads,
    )
    # One wrapper for all three: only the hook points and the size rules differ.
    return SegNet(
        built.net,
        name=name,
        **common,
        decoder_layers=built.decoder_layers,
        embedding_layer=built.embedding_layer,
        size_divisor=built.size_divisor,
        needs_divisible=built.needs_divisible,
        instance_norm=norm == "instance",
    )
