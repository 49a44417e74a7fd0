"""The wrapper every medcl segmentation network is: one forward that can also hand back decoder features.

:class:`SegNet` wraps a MONAI network (built by :func:`medcl.models.networks.build_network`). The wrapper
has a single forward entry point, because under ``DistributedDataParallel`` only ``forward`` is synchronised:

* ``net(x)`` returns the logits tensor, exactly what the MONAI network returns (sliding-window inference,
  the supervised method);
* ``net(x, return_features=True)`` returns a :class:`NetOutput` with the logits, the decoder feature maps
  keyed by their downsampling factor (``"scale_1"`` full resolution, ``"scale_2"``, ``"scale_4"``, ...,
  finest first) and the encoder bottleneck ``embedding`` (what contrastive methods project and contrast).

* ``net(x, perturb=FeatureDropout(p, start))`` drops whole channels (probability ``p``) of every encoder
  feature map the decoder reads (the bottleneck and each skip connection), for the samples ``start:`` of the
  batch only: UniMatch's feature-perturbation stream, in the same forward as the clean samples.

Features are captured (forward hooks) and perturbed (forward pre-hooks on the decoder blocks) by hooks
registered once on named MONAI submodules; MONAI's code is not
copied or forked. The hooks only act while a feature or perturbed call is running, so the plain call pays one
attribute check per hooked block and keeps no tensors alive.

Shape letters used below: B batch, C channels, K classes (``out_channels``), S spatial sizes (H, W or
D, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from medcl.errors import ConfigError
from medcl.precision import mixed_precision

__all__ = ["FeatureDropout", "NetOutput", "SegNet"]

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


@dataclass(frozen=True)
class FeatureDropout:
    """Channel dropout of the encoder features the decoder reads, for part of a batch (UniMatch's FP stream).

    Every encoder map that enters the decoder (the bottleneck, and each skip connection) has whole channels
    zeroed with probability ``p`` and the rest scaled by ``1 / (1 - p)``, independently per sample and map,
    for the samples ``start:`` of the batch; samples ``:start`` go through untouched. The encoder itself runs
    on clean features (the drop acts where the decoder reads them, as UniMatch perturbs its encoder's outputs).
    The masks are drawn here rather than by ``F.dropout2d``, which takes no generator: a resumed run must
    draw the same masks.

    Attributes:
        p: Drop probability of a channel, in ``[0, 1)`` (UniMatch: 0.5).
        start: First perturbed sample of the batch.
        generator: Random source of the masks (a step's :func:`medcl.data.mixing.step_generator`, so a
            resumed run draws the same masks); None uses torch's global generator.
    """

    p: float
    start: int = 0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        """Refuse a probability outside ``[0, 1)`` (1 would divide by zero) and a negative start."""
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"feature dropout p must be in [0, 1); got {self.p}.")
        if self.start < 0:
            raise ValueError(f"feature dropout start must be >= 0; got {self.start}.")

    def __call__(self, t: Tensor) -> Tensor:
        """``t`` with samples ``start:`` channel-dropped. Shape: ``(B, C, *S)``, as ``t``; a new tensor."""
        n = t.shape[0] - self.start
        if self.p == 0.0 or n <= 0:
            return t
        # One keep/drop draw per (sample, channel) of the perturbed samples, broadcast over space; ones before.
        scale = torch.ones((t.shape[0], t.shape[1]) + (1,) * (t.ndim - 2), device=t.device)
        keep = torch.rand(scale[self.start :].shape, generator=self.generator, device=t.device) >= self.p
        scale[self.start :] = keep / (1.0 - self.p)
        return t * scale.to(t.dtype)


class _Recorder:
    """Per-network capture (and perturbation) state shared by that network's hooks.

    The hooks hold this object, never the :class:`SegNet` or a closure, so ``copy.deepcopy`` (an EMA
    teacher) gives the copy its own recorder and ``torch.save``/pickle of the bare ``net`` works.
    """

    def __init__(self) -> None:
        """Start inactive with an empty store."""
        # True only while a ``return_features=True`` call runs.
        self.active = False
        # Filled by the hooks during a feature call; swapped for a fresh dict at its end.
        self.store: dict[str, Tensor] = {}
        # Set only while a ``perturb=`` call runs, with whether a decoder block has run in it yet.
        self.perturb: FeatureDropout | None = None
        self.decoder_started = False


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


class _PerturbHook:
    """A forward pre-hook on a decoder block that drops channels of the encoder features among its inputs.

    The decoder blocks run coarsest first. The first one of a call reads the bottleneck as its first input,
    so all its inputs are perturbed; a later one reads the decoder's own path first and skip connections
    after it, so only those are (BasicUNet's ``UpCat(x, skip)``, SwinUNETR's ``UnetrUpBlock(x, skip)``). A
    block called with one tensor (MONAI UNet's up blocks read skip and decoder path concatenated) gets it
    perturbed whole. Each encoder map is thus dropped exactly once, where the decoder reads it.
    """

    def __init__(self, recorder: _Recorder) -> None:
        """Share the network's state (see :class:`_CaptureHook`)."""
        self.recorder = recorder

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The perturbed inputs during a perturbed call; None (inputs unchanged) otherwise."""
        perturb = self.recorder.perturb
        if perturb is None:
            return None
        first = 0 if len(args) == 1 or not self.recorder.decoder_started else 1
        self.recorder.decoder_started = True
        return tuple(perturb(a) if i >= first and isinstance(a, Tensor) else a for i, a in enumerate(args))


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
        for key in self._decoder_layers:
            modules[key].register_forward_pre_hook(_PerturbHook(self._recorder))

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
    def forward(
        self, x: Tensor, return_features: bool = False, perturb: FeatureDropout | None = None
    ) -> Tensor | NetOutput:
        """Run the network; optionally also return decoder features and the bottleneck.

        Args:
            x: The input image batch. Shape: ``(B, in_channels, *S)``.
            return_features: False (fast path) returns the logits tensor only; True returns a
                :class:`NetOutput`.
            perturb: Drop channels of the encoder features the decoder reads, for the samples
                ``perturb.start:`` (:class:`FeatureDropout`); None (default) perturbs nothing.

        Returns:
            The logits ``(B, K, *S)``, or a :class:`NetOutput` holding them plus ``features`` and
            ``embedding`` when ``return_features`` is True.

        Raises:
            ConfigError: When the spatial size does not suit the network (see :meth:`check_spatial_shape`).
        """
        # x: (B, in_channels, *S); checked first so MONAI's deep stack trace never shows up.
        self.check_spatial_shape(x.shape[2:])
        if perturb is not None:
            self._recorder.perturb, self._recorder.decoder_started = perturb, False
            try:
                return self._forward(x, return_features)
            finally:
                self._recorder.perturb = None
        return self._forward(x, return_features)

    def _forward(self, x: Tensor, return_features: bool) -> Tensor | NetOutput:
        """:meth:`forward` once the input is checked and any perturbation is in place."""
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
