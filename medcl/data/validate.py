"""Open every file of a dataset and report what would break training or silently degrade it.

Errors (training would crash or learn from wrong data): unreadable or truncated file, an image that is not
3D, NaN/Inf intensities, label values missing from ``dataset.json``, non-integer label values, image and label
(or two channels) of different shape or spacing. Warnings (worth a look, often fine): direction or origin that
differ between image and label, spacing anisotropy above 3, oblique direction, orientation different from the
rest of the dataset, a label volume with only background.

Geometry is compared on RAS affines: nibabel's for NIfTI, and SimpleITK's LPS direction/origin/spacing
converted to RAS (x and y negated) for NRRD and MetaImage, so the two agree for the same volume
(:func:`medcl.data.volume.read_volume`, :mod:`medcl.data.geometry`). The findings are
:class:`~medcl.data.check_report.CaseReport` objects, printed or written as JSON by
:mod:`medcl.data.check_report`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from medcl.data.cases import Case, DatasetInfo
from medcl.data.check_report import CaseReport, Problem, _display_path
from medcl.data.files import unreadable_reason
from medcl.data.geometry import axis_codes, direction_cosines, format_vector, voxel_spacing
from medcl.data.volume import _reason, label_values, read_volume, squeeze_to_3d
from medcl.errors import DataError

ANISOTROPY_WARNING = 3.0  # largest / smallest spacing above which a case gets a warning


def check_case(case: Case, info: DatasetInfo, *, atol: float = 1e-3) -> CaseReport:
    """Read every file of a case and check it (see the module docstring for the list of checks).

    Args:
        case: The case.
        info: Its dataset (for the allowed label values).
        atol: Tolerance, in mm, when comparing spacing, direction and origin.

    Returns:
        The case report; an unreadable file is a problem in it, never an exception.
    """
    report = CaseReport(case=case.id, shape=None, spacing=None, labels_found=[])

    def add(path: Path | None, severity: Literal["error", "warning"], message: str) -> None:
        report.problems.append(Problem(case=case.id, file=path, severity=severity, message=message))

    reference: tuple[Path, np.ndarray, np.ndarray] | None = None  # (path, shape, affine) of the 1st channel
    for channel, path in enumerate(case.images):
        volume = _read_3d(path, "image", add)
        if volume is None:
            continue
        array, affine = volume
        if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
            n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
            if n_nan or n_inf:
                add(path, "error", f"image has {n_nan} NaN and {n_inf} Inf voxels (of {array.size}).")
        if reference is None:
            reference = (path, np.asarray(array.shape), affine)
            report.shape = tuple(int(s) for s in array.shape)
            report.spacing = tuple(float(s) for s in voxel_spacing(affine))
            report.orientation = axis_codes(affine)
            _check_geometry_alone(affine, path, add)
        else:
            _compare(reference, path, array.shape, affine, f"channel {channel}", "channel 0", atol, add)

    if case.label is not None:
        volume = _read_3d(case.label, "label", add)
        if volume is not None:
            array, affine = volume
            report.labels_found = _check_label_values(array, case.label, info, add)
            if reference is not None:
                _compare(reference, case.label, array.shape, affine, "label", "image", atol, add)
    return report


def check_dataset(info: DatasetInfo, *, progress: bool = True, workers: int = 1) -> list[CaseReport]:
    """Check every case, labeled and unlabeled, then compare orientations across the dataset.

    Args:
        info: The dataset.
        progress: Show a tqdm progress bar on stderr.
        workers: Cases read in parallel (threads); decompression releases the GIL, so 4-8 helps on big
            volumes.

    Returns:
        One report per case, labeled cases first, each group in id order.
    """
    cases = list(info.cases) + list(info.unlabeled)
    bar = tqdm(total=len(cases), desc=f"checking {info.name}", unit="case", disable=not progress)
    with bar:
        if workers <= 1:
            reports = []
            for case in cases:
                reports.append(check_case(case, info))
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(check_case, case, info) for case in cases]
                reports = []
                for future in futures:
                    reports.append(future.result())
                    bar.update()
    _check_orientations(reports, cases)
    return reports


def require_clean(
    info: DatasetInfo, cases: Sequence[Case], *, progress: bool = False, workers: int = 2, limit: int = 20
) -> None:
    """Run :func:`check_case` (what ``medcl data check`` runs) on ``cases``; raise on any error.

    Training calls this before it preprocesses anything or creates a run folder, so a label that does not
    match its image, a 4D image, an unexpected or fractional label value, or NaN intensities stop the run at
    once with every bad case named, instead of training on them (or failing deep inside a loss).

    Raises:
        DataError: One line per problem (the first ``limit``), each naming the case, file and problem.
    """
    bar = tqdm(total=len(cases), desc="checking cases", unit="case", disable=not progress)
    with bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reports = []
        for report in pool.map(lambda case: check_case(case, info), cases):
            reports.append(report)
            bar.update()
    errors = [p for r in reports for p in r.errors]
    if not errors:
        return
    bad = len({p.case for p in errors})
    lines = [f"  {p.case}: {_display_path(p.file, info.root)}: {p.message}" for p in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"  ... and {len(errors) - limit} more")
    raise DataError(
        f"{bad} case(s) of {info.root} cannot be used for training (the checks of `medcl data check`):\n"
        + "\n".join(lines)
    )


# ---------------------------------------------------------------------------------------------------------
# helpers


def _read_3d(path: Path, kind: str, add: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Read a file and reduce it to 3D (trailing singleton axes dropped); report and return None if it fails."""
    try:
        array, affine = read_volume(path)
    except DataError as err:
        # The table already shows the file, so the message gives only the reason.
        cause = err.__cause__
        reason = _reason(cause) if cause is not None else unreadable_reason(path) or "file does not exist"
        add(path, "error", f"cannot read {kind} file: {reason}.")
        return None
    shape = array.shape
    array = squeeze_to_3d(array)
    if array.ndim != 3:
        hint = (
            "; put each channel in its own file (CASE_0000, CASE_0001, ...)"
            if array.ndim > 3 and kind == "image"
            else ""
        )
        add(path, "error", f"{kind} is {len(shape)}D with shape {tuple(shape)}; expected a 3D volume{hint}.")
        return None
    return array, affine


def _check_geometry_alone(affine: np.ndarray, path: Path, add: Any) -> None:
    spacing = voxel_spacing(affine)
    if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
        add(path, "error", f"affine is degenerate (voxel size {format_vector(spacing)}).")
        return
    ratio = float(spacing.max() / spacing.min())
    if ratio > ANISOTROPY_WARNING:
        add(
            path,
            "warning",
            f"spacing {format_vector(spacing)} is anisotropic (ratio {ratio:.1f} > {ANISOTROPY_WARNING:g}); "
            "consider 2D training or resampling.",
        )
    direction = np.abs(direction_cosines(affine))
    if np.any(direction.max(axis=0) < 1 - 1e-3):
        add(path, "warning", "direction is oblique (axes not aligned with the scanner axes).")


def _compare(
    reference: tuple[Path, np.ndarray, np.ndarray],
    path: Path,
    shape: tuple[int, ...],
    affine: np.ndarray,
    what: str,
    against: str,
    atol: float,
    add: Any,
) -> None:
    """Shape and geometry of ``path`` against the reference file (the first image channel)."""
    _, ref_shape, ref_affine = reference
    if tuple(shape) != tuple(int(s) for s in ref_shape):
        add(
            path,
            "error",
            f"{what} shape {tuple(shape)} differs from {against} shape {tuple(int(s) for s in ref_shape)}.",
        )
        return
    ref_spacing, spacing = voxel_spacing(ref_affine), voxel_spacing(affine)
    if not np.allclose(spacing, ref_spacing, rtol=0, atol=atol):
        add(
            path,
            "error",
            f"{what} spacing {format_vector(spacing)} differs from {against} spacing "
            f"{format_vector(ref_spacing)}.",
        )
        return
    if not np.allclose(direction_cosines(affine), direction_cosines(ref_affine), rtol=0, atol=atol):
        add(
            path,
            "warning",
            f"{what} direction {axis_codes(affine)} differs from {against} direction "
            f"{axis_codes(ref_affine)} (or is rotated relative to it).",
        )
    shift = float(np.linalg.norm(affine[:3, 3] - ref_affine[:3, 3]))
    if shift > atol:
        add(
            path,
            "warning",
            f"{what} origin {format_vector(affine[:3, 3])} differs from {against} origin "
            f"{format_vector(ref_affine[:3, 3])} by {shift:.3g} mm.",
        )


def _check_label_values(array: np.ndarray, path: Path, info: DatasetInfo, add: Any) -> list[int]:
    """Check label values against dataset.json; returns the integer values present."""
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            add(path, "error", f"label has {int((~finite).sum())} NaN/Inf voxels.")
            array = np.where(finite, array, 0)
        values = np.unique(array)
        fractional = values[values != np.round(values)]
        if fractional.size:
            shown = ", ".join(f"{v:g}" for v in fractional[:5])
            add(
                path,
                "error",
                f"label has {fractional.size} non-integer value(s) ({shown}{', ...' if fractional.size > 5 else ''}); "
                "labels must be integer class values.",
            )
            values = values[values == np.round(values)]
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        values = label_values(array)
    else:
        add(path, "error", f"label has dtype {array.dtype}; labels must be integer class values.")
        return []
    found = [int(v) for v in values]
    unexpected = [v for v in found if v not in info.labels]
    if unexpected:
        add(
            path,
            "error",
            f"label values {unexpected} are not in dataset.json labels {sorted(info.labels)}.",
        )
    if found == [0]:
        add(path, "warning", "label contains only background (0).")
    return found


def _check_orientations(reports: list[CaseReport], cases: list[Case]) -> None:
    """Warn for cases whose orientation differs from the dataset majority."""
    counts = Counter(r.orientation for r in reports if r.orientation is not None)
    if len(counts) < 2:
        return
    majority, n_majority = counts.most_common(1)[0]
    total = sum(counts.values())
    for report, case in zip(reports, cases, strict=True):
        if report.orientation is not None and report.orientation != majority:
            report.problems.append(
                Problem(
                    case=report.case,
                    file=case.images[0],
                    severity="warning",
                    message=(
                        f"orientation {report.orientation} differs from the dataset majority {majority} "
                        f"({n_majority} of {total} cases)."
                    ),
                )
            )
