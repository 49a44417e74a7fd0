"""Writing what inference produces: label maps and voxel maps on the input's own grid, atomically.

An output never replaces its input and a killed write leaves no half file: each file is written to a
temporary name beside its target and renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medcl.data.io import read_sitk
from medcl.runtime.files import atomic_tempfile

#: Suffixes written through nibabel (header kept); any other goes through SimpleITK.
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def image_suffix(path: Path) -> str:
    """``.nii.gz``, ``.nii``, ``.nrrd``, ... of a file; ``""`` for a folder (DICOM series)."""
    name = path.name.lower()
    if path.is_dir():
        return ""
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _atomic_target(out_path: Path) -> Path:
    """A temporary path beside ``out_path`` with the same (double) suffix, for write-then-rename."""
    suffix = image_suffix(out_path) or ".tmp"
    fd, tmp = atomic_tempfile(out_path, suffix)
    os.close(fd)
    return Path(tmp)


def write_labels(labels: np.ndarray, reference: Path, out_path: Path) -> Path:
    """Write a uint8 label map with the geometry of ``reference`` (atomically).

    NIfTI references keep their header (affine, qform/sform codes, units); other formats and DICOM series
    go through SimpleITK with the reference's origin, spacing and direction copied. The output format is the
    suffix of ``out_path``.
    """
    return _write_like(labels, reference, out_path, np.uint8)


def write_map(values: np.ndarray, reference: Path, out_path: Path) -> Path:
    """Write a float32 voxel map (an uncertainty map) with the geometry of ``reference``, as :func:`write_labels`."""
    return _write_like(values, reference, out_path, np.float32)


def _write_like(array: np.ndarray, reference: Path, out_path: Path, dtype: type) -> Path:
    """Write ``array`` as ``dtype`` on the grid and geometry of ``reference``, atomically."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_target(out_path)
    try:
        if image_suffix(reference) in NIFTI_SUFFIXES and image_suffix(out_path) in NIFTI_SUFFIXES:
            ref = nib.load(str(reference))
            header = ref.header.copy()
            header.set_data_dtype(dtype)
            img = nib.Nifti1Image(array.astype(dtype), ref.affine, header)
            img.header.set_slope_inter(1, 0)
            nib.save(img, str(tmp))
        else:
            import SimpleITK as sitk  # only for non-NIfTI outputs

            ref_img = read_sitk(reference)
            arr = array.astype(dtype)
            out = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
            out.SetOrigin(ref_img.GetOrigin())
            out.SetSpacing(ref_img.GetSpacing())
            out.SetDirection(ref_img.GetDirection())
            sitk.WriteImage(out, str(tmp), useCompression=True)
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path
