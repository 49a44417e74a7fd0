"""Image reading beyond NIfTI: a MONAI reader backed by SimpleITK.

MONAI's own readers for ``.nrrd``/``.mha``/DICOM need ``itk`` or ``pynrrd``; medcl depends on SimpleITK
instead (it also writes those formats back for ``medcl infer``). The reader returns arrays indexed
``(x, y, z)`` with a RAS affine, exactly as MONAI's ``NibabelReader`` does for NIfTI, so every downstream
transform (orientation, spacing, inversion) sees one convention whatever the file format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from monai.data import ImageReader
from monai.data.image_reader import _stack_images
from monai.utils import MetaKeys, SpaceKeys

if TYPE_CHECKING:
    import SimpleITK as sitk

SITK_SUFFIXES = (".nrrd", ".mha", ".mhd", ".dcm")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def sitk_affine(image: sitk.Image) -> np.ndarray:
    """4x4 RAS affine from SimpleITK's LPS geometry; axes beyond the third are ignored, missing ones are unit."""
    dim = image.GetDimension()
    k = min(dim, 3)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:k, :k]
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[:k]
    affine = np.eye(4)
    affine[:k, :k] = direction * spacing[None, :]
    affine[:k, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)[:k]
    return _LPS_TO_RAS @ affine


def sitk_to_array(image: sitk.Image) -> np.ndarray:
    """Voxel array indexed (x, y, z[, channel]), matching :func:`sitk_affine`."""
    import SimpleITK as sitk  # imported when a non-NIfTI file is read (NIfTI goes through nibabel)

    array = sitk.GetArrayFromImage(image)  # (z, y, x[, c])
    spatial = image.GetDimension()
    order = tuple(reversed(range(spatial))) + tuple(range(spatial, array.ndim))
    return np.ascontiguousarray(array.transpose(order))


def read_sitk(path: str | Path) -> sitk.Image:
    """Read a file, or a DICOM series when ``path`` is a folder."""
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(path))
        if not files:
            raise OSError(f"no DICOM series found in folder {path}")
        reader.SetFileNames(files)
        return reader.Execute()
    return sitk.ReadImage(str(path))


class SimpleITKReader(ImageReader):
    """MONAI ``ImageReader`` for everything SimpleITK reads (NRRD, MetaImage, DICOM series folders)."""

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return all(Path(n).is_dir() or str(n).lower().endswith(SITK_SUFFIXES) for n in names)

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs) -> list[sitk.Image] | sitk.Image:
        names = [data] if isinstance(data, (str, Path)) else list(data)
        images = [read_sitk(n) for n in names]
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        images = img if isinstance(img, (list, tuple)) else [img]
        arrays, meta = [], {}
        for image in images:
            array = sitk_to_array(image)
            affine = sitk_affine(image)
            meta = {
                MetaKeys.AFFINE: affine,
                MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[: image.GetDimension()]),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if array.ndim == image.GetDimension() else -1,
                "pixdim": np.asarray([1.0, *image.GetSpacing()]),
            }
            arrays.append(array)
        return _stack_images(arrays, meta), meta
