"""Evaluate predicted label maps against reference labels and summarise per case and per class.

Two sources of predictions share one per-case routine (:func:`evaluate_case`):

* :func:`evaluate_folders`: label files in a prediction folder paired by case id with those of a reference
  folder (what ``medcl evaluate --pred --gt`` runs; the pairing rules are in :mod:`medcl.evaluation.pairing`);
* :func:`evaluate_predictor`: label maps produced on the fly by a predictor for dataset cases (``medcl
  evaluate --model``).

Nothing is silently skipped: every case that cannot be scored becomes a :class:`CaseProblem` (prediction
missing, prediction without reference, two files for one case, unreadable file, not 3D, non-integer values,
shape mismatch with both shapes, geometry mismatch naming spacing/origin/direction, label values that the
label map does not know) and is left out of the means; the summary lists the problems and the CLI exits 1.

Label maps are read and checked (3D, integer values, shape, geometry with a tolerance of ``GEOMETRY_ATOL``)
by :mod:`medcl.evaluation.label_maps`, which also gives the label names to score (:func:`load_labels`,
:func:`infer_labels`). Distances use the reference file's spacing (``spacing="mm"``) or unit voxels
(``spacing="voxel"``). The :class:`Summary` these drivers return, its JSON and CSV files and its tables are
in :mod:`medcl.evaluation.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
from tqdm import tqdm

from medcl.data.cases import Case
from medcl.data.geometry import voxel_spacing
from medcl.data.volume import label_values
from medcl.errors import DataError
from medcl.evaluation.label_maps import _as_label_map, _read_label, geometry_mismatch
from medcl.evaluation.metrics import EmptyPolicy, check_empty_policy, label_metrics
from medcl.evaluation.pairing import pair_folders
from medcl.evaluation.report import SPACING_MODES, CaseProblem, CaseResult, SpacingMode, Summary
from medcl.evaluation.uncertainty import case_uncertainty

__all__ = ["Segmenter", "evaluate_case", "evaluate_folders", "evaluate_predictor"]


class Segmenter(Protocol):
    """What :func:`evaluate_predictor` needs of a predictor (``medcl.inference.predictor.Predictor``).

    ``segment`` returns the label map ``(X, Y, Z)`` in the first image's geometry and its 4x4 RAS affine,
    either as a ``(labels, affine)`` pair or as an object with ``.labels`` and ``.affine``.
    """

    def segment(self, image_paths: Sequence[Path]) -> Any: ...


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    labels: dict[int, str],
    spacing_mode: SpacingMode = "mm",
    empty_policy: EmptyPolicy = "strict",
    *,
    progress: bool = False,
) -> Summary:
    """Score every prediction against the reference label file of the same case id.

    As nnU-Net's ``evaluate_folder``, only the predicted cases are scored: a reference without a prediction
    is listed in ``Summary.not_predicted`` (a warning), while a prediction without a reference is a problem.

    Args:
        pred_dir: Folder of predicted label maps.
        gt_dir: Folder of reference label maps.
        labels: Label value -> class name, background 0 included (``load_labels``, ``infer_labels`` of
            :mod:`medcl.evaluation.label_maps`).
        spacing_mode: ``"mm"`` (each reference file's spacing) or ``"voxel"``.
        empty_policy: ``"strict"`` or ``"ssl4mis"`` (see :mod:`medcl.evaluation.metrics`).
        progress: Draw a tqdm bar on stderr.

    Returns:
        The summary; per-case problems are in it, never raised.

    Raises:
        DataError: A folder is missing, both are the same folder, or the prediction folder holds no label
            file.
        ValueError: ``spacing_mode`` or ``empty_policy`` is unknown.
    """
    _check_modes(spacing_mode, empty_policy)
    pairing = pair_folders(pred_dir, gt_dir)
    summary = Summary(
        labels=dict(labels),
        spacing=spacing_mode,
        empty_policy=empty_policy,
        settings={"prediction_dir": str(pairing.pred_dir), "reference_dir": str(pairing.gt_dir)},
    )
    summary.not_predicted = pairing.not_predicted
    for pair in tqdm(pairing.cases, desc="evaluating", unit="case", disable=not progress):
        if isinstance(pair, CaseProblem):  # several files for the case, or no reference
            summary.problems.append(pair)
            continue
        volume = _read_label(pair.prediction, pair.case, "prediction")
        if isinstance(volume, CaseProblem):
            summary.problems.append(volume)
            continue
        result, problems = evaluate_case(
            pair.case,
            volume[0],
            volume[1],
            pair.reference,
            labels,
            spacing_mode,
            empty_policy,
            pair.prediction,
        )
        summary.problems.extend(problems)
        if result is not None:
            summary.cases.append(result)
    return summary


def evaluate_predictor(
    predictor: Segmenter,
    cases: Sequence[Case],
    labels: dict[int, str],
    spacing_mode: SpacingMode = "mm",
    empty_policy: EmptyPolicy = "strict",
    *,
    progress: bool = False,
    uncertainty: bool = False,
) -> Summary:
    """Segment each labeled case with ``predictor`` and score it against the case's label file.

    A case whose images the predictor cannot read (it raises :class:`medcl.errors.DataError`) becomes a
    problem; any other exception (out of memory, a bug) propagates.

    Args:
        predictor: Anything with ``segment(image_paths)``, see :class:`Segmenter`.
        cases: The cases; each must have a label file.
        labels: Label value -> class name, background 0 included.
        spacing_mode: ``"mm"`` or ``"voxel"``.
        empty_policy: ``"strict"`` or ``"ssl4mis"``.
        progress: Draw a tqdm bar on stderr.
        uncertainty: Also ask the predictor for its uncertainty map (``segment(..., uncertainty=True)``) and
            score how it matches the errors (``CaseResult.uncertainty``, ``Summary.uncertainty_summary``).

    Returns:
        The summary (``prediction`` is ``None`` in every case: predictions stay in memory).

    Raises:
        DataError: A case has no label file.
        ValueError: ``spacing_mode`` or ``empty_policy`` is unknown.
    """
    _check_modes(spacing_mode, empty_policy)
    unlabeled = [c.id for c in cases if c.label is None]
    if unlabeled:
        raise DataError(f"Cases without a label file cannot be evaluated: {', '.join(unlabeled[:5])}.")
    summary = Summary(labels=dict(labels), spacing=spacing_mode, empty_policy=empty_policy)
    for case in tqdm(cases, desc="predicting", unit="case", disable=not progress):
        try:
            segmentation = (
                predictor.segment(list(case.images), uncertainty=True)
                if uncertainty
                else predictor.segment(list(case.images))
            )
        except DataError as err:
            summary.problems.append(CaseProblem(case.id, case.images[0], f"prediction failed: {err}"))
            continue
        if hasattr(segmentation, "labels"):
            pred, affine = segmentation.labels, segmentation.affine
        else:
            pred, affine = segmentation
        reference = cast(Path, case.label)  # every case has a label: checked above
        result, problems = evaluate_case(
            case.id,
            np.asarray(pred),
            np.asarray(affine),
            reference,
            labels,
            spacing_mode,
            empty_policy,
            uncertainty=getattr(segmentation, "uncertainty", None) if uncertainty else None,
        )
        summary.problems.extend(problems)
        if result is not None:
            summary.cases.append(result)
    return summary


def evaluate_case(
    case_id: str,
    pred: np.ndarray,
    pred_affine: np.ndarray,
    reference: Path,
    labels: dict[int, str],
    spacing_mode: SpacingMode = "mm",
    empty_policy: EmptyPolicy = "strict",
    prediction_file: Path | None = None,
    *,
    uncertainty: np.ndarray | None = None,
) -> tuple[CaseResult | None, list[CaseProblem]]:
    """Check one prediction against its reference file and score it if nothing is wrong.

    Checks, in order: the reference can be read and is a 3D integer map; the prediction is 3D with integer
    values; shapes agree; geometry (spacing, origin, direction) agrees; both hold only values of ``labels``.

    Args:
        case_id: The case id.
        pred: The predicted label map.
        pred_affine: Its 4x4 RAS affine.
        reference: The reference label file.
        labels: Label value -> class name, background 0 included.
        spacing_mode: ``"mm"`` (the reference's spacing) or ``"voxel"``.
        empty_policy: ``"strict"`` or ``"ssl4mis"``.
        prediction_file: The prediction's file, for messages and the summary (``None`` if in memory).
        uncertainty: The prediction's per-voxel uncertainty map, same grid; scored against the errors.

    Returns:
        ``(result, [])`` for a scored case, ``(None, problems)`` otherwise.
    """
    ref_volume = _read_label(reference, case_id, "reference")
    if isinstance(ref_volume, CaseProblem):
        return None, [ref_volume]
    ref, ref_affine = ref_volume
    where = prediction_file if prediction_file is not None else reference
    pred_checked = _as_label_map(pred, case_id, where, "prediction")
    if isinstance(pred_checked, CaseProblem):
        return None, [pred_checked]
    pred = pred_checked
    if pred.shape != ref.shape:
        message = f"prediction shape {tuple(pred.shape)} differs from reference shape {tuple(ref.shape)}."
        return None, [CaseProblem(case_id, where, message)]
    mismatch = geometry_mismatch(np.asarray(pred_affine, dtype=np.float64), ref_affine)
    if mismatch:
        return None, [CaseProblem(case_id, where, f"prediction geometry differs from reference: {mismatch}.")]
    problems = []
    for array, file, role in ((pred, where, "prediction"), (ref, reference, "reference")):
        unknown = [v for v in label_values(array) if v not in labels]
        if unknown:
            shown = ", ".join(str(v) for v in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            message = f"{role} has label values [{shown}] that are not in the labels {sorted(labels)}."
            problems.append(CaseProblem(case_id, file, message))
    if problems:
        return None, problems
    spacing = tuple(float(s) for s in voxel_spacing(ref_affine)) if spacing_mode == "mm" else None
    foreground = [value for value in sorted(labels) if value != 0]
    metrics = label_metrics(pred, ref, foreground, spacing, empty_policy=empty_policy)
    scored = None if uncertainty is None else case_uncertainty(np.asarray(uncertainty), pred, ref)
    return CaseResult(case_id, prediction_file, reference, metrics, scored), []


def _check_modes(spacing_mode: str, empty_policy: str) -> None:
    if spacing_mode not in SPACING_MODES:
        raise ValueError(f"spacing_mode must be one of {', '.join(SPACING_MODES)}; got {spacing_mode!r}.")
    check_empty_policy(empty_policy)
