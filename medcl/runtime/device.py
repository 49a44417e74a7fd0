"""The compute device from a config or flag value (``auto``, ``cpu``, ``cuda``, ``cuda:1``)."""

from __future__ import annotations

import torch

from medcl.errors import MedclError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a clear error, not a crash later."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedclError(
            f"device {name!r} (--device or train.device) asked for a GPU, but no CUDA device is available; "
            "use 'cpu' or 'auto'"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
