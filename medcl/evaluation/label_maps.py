"""Reading and checking label maps for scoring, and the label names to score.

A label map is scored only if it is a 3D integer map (trailing singleton axes dropped, integral floats cast)
holding values of the label map only, and a prediction only if its shape and geometry equal its reference's.
Geometry is compared on the RAS affines of :func:`medcl.data.volume.read_volume` with a tolerance of
``GEOMETRY_ATOL`` (1e-3 mm for spacing and origin, 1e-3 for direction cosines), using the one implementation
of spacing and direction in :mod:`medcl.data.geometry`. What fails becomes a
:class:`~medcl.evaluation.report.CaseProblem`, never an exception.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcl.data.dataset_json import parse_labels, read_dataset_json
from medcl.data.geometry import direction_cosines, format_vector, voxel_spacing
from medcl.data.volume import label_values, read_volume, squeeze_to_3d
from medcl.errors import DataError
from medcl.evaluation.pairing import _folder, _label_files
from medcl.evaluation.report import CaseProblem

__all__ = ["GEOMETRY_ATOL", "geometry_mismatch", "infer_labels", "load_labels"]

GEOMETRY_ATOL = 1e-3  # mm for spacing and origin, unitless for direction cosines


def geometry_mismatch(affine: np.ndarray, reference: np.ndarray, atol: float = GEOMETRY_ATOL) -> str:
    """Describe how two RAS affines differ (spacing, origin, direction), or return ``""`` if they agree.

    Args:
        affine: The 4x4 affine to check.
        reference: The 4x4 affine it should equal.
        atol: Tolerance in mm for spacing and origin, and for direction cosines.

    Returns:
        ``"spacing (1, 1, 2) vs (1, 1, 1); origin ..."``, naming only what differs.
    """
    parts = []
    spacing, ref_spacing = voxel_spacing(affine), voxel_spacing(reference)
    if not np.allclose(spacing, ref_spacing, rtol=0, atol=atol):
        parts.append(f"spacing {format_vector(spacing)} vs {format_vector(ref_spacing)}")
    origin, ref_origin = affine[:3, 3], reference[:3, 3]
    if not np.allclose(origin, ref_origin, rtol=0, atol=atol):
        parts.append(f"origin {format_vector(origin)} vs {format_vector(ref_origin)}")
    direction, ref_direction = direction_cosines(affine), direction_cosines(reference)
    if not np.allclose(direction, ref_direction, rtol=0, atol=atol):
        parts.append(
            f"direction {format_vector(direction.T.ravel())} vs {format_vector(ref_direction.T.ravel())} "
            "(axis cosines, RAS)"
        )
    return "; ".join(parts)


def load_labels(path: str | Path) -> dict[int, str]:
    """Label value -> class name from a ``dataset.json`` (MSD or nnU-Net v2 form) or the folder holding it.

    Raises:
        DataError: The file is missing, not JSON, or has no valid ``"labels"`` map.
    """
    path = Path(path).expanduser()
    json_path = path / "dataset.json" if path.is_dir() else path
    if not json_path.is_file():
        raise DataError(f"Labels file {json_path} does not exist; give a dataset.json or its folder.")
    return parse_labels(read_dataset_json(json_path), json_path)


def infer_labels(gt_dir: str | Path) -> dict[int, str]:
    """Labels found in the reference files when no ``dataset.json`` is given: ``{0: "background", v: "v"}``.

    Unreadable files are passed over here (the evaluation reports them). Every file is read, so giving
    ``--labels`` is faster, and it is the only way to score a class that no reference file contains.

    Raises:
        DataError: The folder is missing or holds no readable label file.
    """
    gt_dir = _folder(gt_dir, "Reference")
    files, _ = _label_files(gt_dir)
    values: set[int] = set()
    readable = 0
    for case_id, path in files.items():
        volume = _read_label(path, case_id, "reference")
        if isinstance(volume, CaseProblem):
            continue
        readable += 1
        values.update(label_values(volume[0]))
    if not readable:
        raise DataError(f"Reference folder {gt_dir} holds no readable label file.")
    values.discard(0)
    return {0: "background", **{v: str(v) for v in sorted(values)}}


def _read_label(path: Path, case_id: str, role: str) -> tuple[np.ndarray, np.ndarray] | CaseProblem:
    try:
        array, affine = read_volume(path)
    except DataError as err:
        return CaseProblem(case_id, path, f"unreadable {role} file: {err}")
    checked = _as_label_map(array, case_id, path, role)
    if isinstance(checked, CaseProblem):
        return checked
    return checked, affine


def _as_label_map(array: np.ndarray, case_id: str, path: Path, role: str) -> np.ndarray | CaseProblem:
    """A 3D integer label map (trailing singleton axes dropped, integral floats cast), or the problem."""
    shape = array.shape
    array = squeeze_to_3d(array)
    if array.ndim != 3:
        return CaseProblem(case_id, path, f"{role} is {len(shape)}D with shape {tuple(shape)}; expected 3D.")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            return CaseProblem(case_id, path, f"{role} has {int((~finite).sum())} NaN/Inf voxels.")
        if not np.array_equal(array, np.round(array)):
            return CaseProblem(case_id, path, f"{role} has non-integer values; labels must be class values.")
        return array.astype(np.int32)
    if not np.issubdtype(array.dtype, np.integer):
        return CaseProblem(
            case_id, path, f"{role} has dtype {array.dtype}; labels must be integer class values."
        )
    return array
