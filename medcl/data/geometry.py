"""Voxel geometry read from a 4x4 RAS affine: spacing, direction cosines, orientation codes.

One implementation for every place that compares volumes: ``medcl data check`` (:mod:`medcl.data.validate`)
and ``medcl evaluate`` (:mod:`medcl.evaluation.label_maps`). The affine is the one
:func:`medcl.data.volume.read_volume` returns (nibabel's for NIfTI, SimpleITK's converted to RAS otherwise);
its columns are the voxel axes, so the length of column ``i`` is the voxel size along array axis ``i``.
"""

from __future__ import annotations

from collections.abc import Iterable

import nibabel as nib
import numpy as np

__all__ = ["axis_codes", "direction_cosines", "format_vector", "voxel_spacing"]


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis: the length of each of the first three affine columns.

    Args:
        affine: A 4x4 affine (anything ``np.asarray`` accepts).

    Returns:
        Shape ``(3,)``, float.
    """
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def direction_cosines(affine: np.ndarray) -> np.ndarray:
    """The affine's 3x3 part with each column divided by its length (a column of length 0 is kept as is).

    Args:
        affine: A 4x4 affine.

    Returns:
        Shape ``(3, 3)``; column ``i`` is the RAS direction of array axis ``i``.
    """
    spacing = voxel_spacing(affine)
    return np.asarray(affine)[:3, :3] / np.where(spacing > 0, spacing, 1.0)[None, :]


def axis_codes(affine: np.ndarray) -> str | None:
    """Orientation code such as ``"RAS"`` (closest axes for an oblique affine); None if degenerate."""
    if not np.all(np.isfinite(affine)) or np.any(voxel_spacing(affine) <= 0):
        return None
    codes = nib.aff2axcodes(affine)
    return None if None in codes else "".join(codes)


def format_vector(values: Iterable[float]) -> str:
    """A vector for a message, four significant digits per value: ``(1, 1, 2.5)``."""
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
