"""Numeric precision: networks under bf16/fp16 autocast, losses in float32.

``train.precision`` (and ``medcl infer --precision``) is one of:

* ``auto``: bf16 autocast on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX on x86, the BF16 extension
  on Arm) and on CUDA devices that support bf16; fp16 autocast with a gradient scaler on older CUDA devices;
  fp32 otherwise (a CPU without native bf16 would emulate it, slower than fp32).
* ``fp32``, ``bf16``, ``fp16``: forced.

Only the networks run in reduced precision. Every module whose ``forward`` carries
:func:`mixed_precision` (the segmentation networks and the projection heads) runs it under
``torch.autocast`` at the module's ``compute_dtype`` and returns float32 tensors, so whatever the methods and
losses compute from them (contrastive logits, logsumexp, Dice denominators, class centers, the Hungarian
assignment, EMA statistics) is float32 without each loss having to opt out of autocast.
:func:`set_compute_dtype` sets that dtype on every such module of a model (the trainer and the predictor
call it); the default ``None`` runs in float32.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from medcl.errors import ConfigError

log = logging.getLogger(__name__)

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision for one device.

    Attributes:
        name: ``fp32``, ``bf16`` or ``fp16``.
        device_type: ``cpu`` or ``cuda`` (what ``torch.autocast`` is given).
    """

    name: Literal["fp32", "bf16", "fp16"]
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype of the networks; ``None`` for fp32."""
        return _DTYPES[self.name]

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling (bf16 has fp32's exponent range and needs none)."""
        return self.name == "fp16"


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (not emulated).

    x86: AVX512-BF16 or AMX tiles (torch's own cpuinfo probe); Arm: the BF16 extension (``bf16`` in the
    ``Features`` line of /proc/cpuinfo). Vendor names are never consulted.
    """
    probes = [
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if any(probe is not None for probe in probes):
        try:
            if any(probe() for probe in probes if probe is not None):
                return True
        except RuntimeError:  # pragma: no cover - a torch build without the cpuinfo probes
            pass
    return _cpuinfo_flags() & {"avx512_bf16", "amx_bf16", "bf16"} != set()


def _cpuinfo_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def _cuda_has_bf16() -> bool:
    """Whether the current CUDA device has native bf16 (Ampere and newer)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.4 has no including_emulation
        return torch.cuda.is_bf16_supported()


def resolve_precision(name: str, device: torch.device | str) -> Precision:
    """The precision ``name`` (``auto``, ``fp32``, ``bf16``, ``fp16``) means on ``device``.

    Raises:
        ConfigError: For an unknown name, bf16 on a CUDA device without bf16, or fp16 on a CPU (no fast
            fp16 kernels there; use bf16 or fp32).
    """
    device_type = torch.device(device).type
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device_type == "cuda":
            name = "bf16" if _cuda_has_bf16() else "fp16"
        elif device_type == "cpu":
            name = "bf16" if cpu_has_bf16() else "fp32"
        else:
            name = "fp32"
    elif name == "bf16" and device_type == "cuda" and not _cuda_has_bf16():
        raise ConfigError(
            f"precision bf16 was asked for but {torch.cuda.get_device_name()} has no bf16 support; use fp16 or auto"
        )
    elif name == "fp16" and device_type != "cuda":
        raise ConfigError(
            f"precision fp16 needs a CUDA device (running on {device_type}); use bf16, fp32 or auto"
        )
    elif name == "bf16" and device_type == "cpu" and not cpu_has_bf16():
        log.warning(
            "precision bf16 on a CPU without native bf16 (%s): it is emulated and usually slower than fp32",
            platform.processor() or platform.machine(),
        )
    return Precision(name, device_type)  # type: ignore[arg-type]


def to_float32(obj: Any) -> Any:
    """``obj`` with every bf16/fp16 tensor in it cast to float32 (tensors, dicts, lists, tuples, dataclasses)."""
    if torch.is_tensor(obj):
        return obj.float() if obj.dtype in (torch.bfloat16, torch.float16) else obj
    if isinstance(obj, dict):
        return {k: to_float32(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_float32(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: to_float32(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        )
    return obj


F = TypeVar("F", bound=Callable[..., Any])


def mixed_precision(forward: F) -> F:
    """Decorate a module's ``forward(self, x, ...)``: run it under autocast at ``self.compute_dtype``.

    With ``compute_dtype`` None (the default) the forward runs as written. Otherwise it runs under
    ``torch.autocast`` on ``x``'s device (the module's parameters' device when ``x`` is not a tensor) at
    ``compute_dtype``, and its bf16/fp16 outputs come back as float32,
    so the caller's arithmetic is float32 while the convolutions, matrix products and attention inside ran
    in reduced precision.
    """

    @functools.wraps(forward)
    def wrapper(self: nn.Module, x: Any, *args: Any, **kwargs: Any) -> Any:
        dtype = getattr(self, "compute_dtype", None)
        if dtype is None:
            return forward(self, x, *args, **kwargs)
        device = x.device if torch.is_tensor(x) else next(self.parameters()).device
        with torch.autocast(device.type, dtype=dtype):
            out = forward(self, x, *args, **kwargs)
        return to_float32(out)

    wrapper._medcl_mixed_precision = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


#: A normalisation over fewer positions than this runs in float32 under autocast (see :func:`set_compute_dtype`).
SMALL_NORM = 256
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)  # BatchNorm*, InstanceNorm*, ...


def _small_norm_in_float32(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: hand a norm layer a float32 input when it normalises over few positions.

    Instance norm over a 2x2x2 bottleneck (SwinUNETR's 1/32 stage on a 64^3 patch) in bf16 gives gradients
    that overflow (measured: a NaN weight at the second step of a 3D MCSC run, fine in fp32); over thousands
    of positions bf16 is harmless, so only small normalisations (a negligible share of the work) are promoted.
    """
    x = args[0]
    if not torch.is_tensor(x) or x.dtype not in (torch.bfloat16, torch.float16):
        return None
    if isinstance(module, nn.LayerNorm):
        extent = 1
        for size in module.normalized_shape:
            extent *= size
    else:
        extent = x[0, 0].numel() if x.ndim > 2 else x.shape[0]
    return (x.float(), *args[1:]) if extent < SMALL_NORM else None


_CONVS = (nn.modules.conv._ConvNd,)


def _small_conv_enter_float32(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook: a convolution over fewer than :data:`SMALL_NORM` positions runs in float32.

    Measured on the CPU (oneDNN, torch 2.13): the bf16 weight gradient of a 3x3x3 convolution on a 2x2x2 map
    (SwinUNETR's 1/32 stage on a 64^3 patch) came out as 1e33 or NaN, differently from run to run, while fp32
    was fine. Such maps are a negligible share of the arithmetic, so they simply leave autocast.
    """
    x = args[0]
    if not torch.is_tensor(x) or x.ndim < 3 or x[0, 0].numel() >= SMALL_NORM:
        return None
    if not torch.is_autocast_enabled(x.device.type):
        return None
    context = torch.autocast(x.device.type, enabled=False)
    context.__enter__()
    module._medcl_autocast_off = context
    return (x.float(), *args[1:])


def _small_conv_exit(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    """Forward hook: leave the float32 region :func:`_small_conv_enter_float32` entered."""
    context = module.__dict__.pop("_medcl_autocast_off", None)
    if context is not None:
        context.__exit__(None, None, None)


def set_compute_dtype(model: nn.Module, dtype: torch.dtype | None) -> int:
    """Set ``compute_dtype`` on every module of ``model`` whose forward is :func:`mixed_precision`.

    Normalisation layers inside those modules also get a pre-hook (once) that runs a normalisation over fewer
    than :data:`SMALL_NORM` positions in float32 (see :func:`_small_norm_in_float32`).

    Returns:
        How many modules were set (0 means the model has no reduced-precision part).
    """
    count = 0
    for module in model.modules():
        if getattr(type(module).forward, "_medcl_mixed_precision", False):
            module.compute_dtype = dtype
            count += 1
            for sub in module.modules():
                if getattr(sub, "_medcl_small_hooks", False):
                    continue
                if isinstance(sub, _NORMS):
                    sub.register_forward_pre_hook(_small_norm_in_float32)
                elif isinstance(sub, _CONVS):
                    sub.register_forward_pre_hook(_small_conv_enter_float32)
                    sub.register_forward_hook(_small_conv_exit, always_call=True)
                else:
                    continue
                sub._medcl_small_hooks = True
    return count
