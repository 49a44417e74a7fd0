"""Read one image or label file into an array and its 4x4 RAS affine, with errors that name the file.

NIfTI is read with nibabel; NRRD, MetaImage and DICOM series with SimpleITK (:mod:`medcl.data.io`), whose LPS
direction/origin/spacing are converted to RAS (x and y negated), so the two agree for the same volume.
``medcl data check`` (:mod:`medcl.data.validate`) and ``medcl evaluate`` read every volume through
:func:`read_volume`.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np

from medcl.data.files import unreadable_reason
from medcl.data.io import read_sitk, sitk_affine, sitk_to_array
from medcl.errors import DataError

__all__ = ["label_values", "read_volume", "squeeze_to_3d"]


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image or label file into an array indexed like nibabel's and a 4x4 RAS affine.

    NIfTI is read with nibabel; NRRD/MetaImage with SimpleITK, whose ``(z, y, x)`` array is transposed to
    ``(x, y, z)`` and whose LPS geometry is converted to RAS. Multi-component pixels stay on the last axis.

    Args:
        path: The file, or a folder holding a DICOM series.

    Returns:
        ``(array, affine)``; the array keeps the file's dtype (scaled NIfTI data comes back as float).

    Raises:
        DataError: The file is missing, unreadable, corrupt or truncated; the message names the file and the
            underlying reason.
    """
    path = Path(path)
    reason = unreadable_reason(path)
    if reason is not None and reason != "file does not exist":  # a symbolic link loop, no permission
        raise DataError(f"Cannot read {path}: {reason}.")
    if not (path.is_file() or path.is_dir()):  # a folder is a DICOM series
        raise DataError(f"Image file {path} does not exist.")
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            image = nib.load(str(path), mmap=False)
            array = np.asarray(image.dataobj)
            affine = np.asarray(image.affine, dtype=np.float64)
        else:
            image = read_sitk(path)
            array, affine = sitk_to_array(image), sitk_affine(image)
    except Exception as err:  # nibabel/zlib/SimpleITK raise many types for a bad file
        raise DataError(f"Cannot read {path}: {_reason(err)}.") from err
    return array, affine


def squeeze_to_3d(array: np.ndarray) -> np.ndarray:
    """``array`` with its trailing singleton axes beyond the third dropped (``(X, Y, Z, 1)`` -> ``(X, Y, Z)``).

    The result may still not be 3D (a 2D file, or a real 4th axis): the caller names that problem its way.
    """
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def label_values(array: np.ndarray) -> list[int]:
    """The values present in an integer (or bool) label map, sorted.

    ``np.bincount`` when they are small non-negative integers (much faster than ``np.unique``'s sort on a
    large volume), ``np.unique`` otherwise.
    """
    if array.size == 0:
        return []
    low, high = int(array.min()), int(array.max())
    if 0 <= low and high < 65536:
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel().astype(np.intp, copy=False)))]
    return [int(v) for v in np.unique(array)]


def _reason(err: BaseException) -> str:
    """First line of an exception's message, with its type (``... (EOFError)``)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    text = lines[0]
    if text.startswith("Exception thrown in SimpleITK") and len(lines) > 1:
        # SimpleITK's first line is a source location; then comes ITK's message, its last line the cause.
        inner = [
            re.sub(r"^(s?itk::ERROR:|ITK ERROR:)\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?", "", x) for x in lines[1:]
        ]
        text = inner[0] if len(inner) == 1 else f"{inner[0]} {inner[-1]}"
    return f"{text} ({type(err).__name__})"
