"""Evaluate predicted label maps against reference labels and summarise per case and per class.

Two sources of predictions share one per-case routine (:func:`evaluate_case`):

* :func:`evaluate_folders`: label files in a prediction folder paired by case id with those of a reference
  folder (what ``medcl evaluate --pred --gt`` runs);
* :func:`evaluate_predictor`: label maps produced on the fly by a predictor for dataset cases (``medcl
  evaluate --model``).

A case id is a file name without its extension (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``); label
files carry no nnU-Net channel suffix, so ``case_0000.nii.gz`` is the case ``case_0000``. Hidden files and
files with other extensions are ignored.

Nothing is silently skipped: every case that cannot be scored becomes a :class:`CaseProblem` (prediction
missing, prediction without reference, two files for one case, unreadable file, not 3D, non-integer values,
shape mismatch with both shapes, geometry mismatch naming spacing/origin/direction, label values that the
label map does not know) and is left out of the means; the summary lists the problems and the CLI exits 1.

Geometry is compared on the RAS affines of :func:`medcl.data.validate.read_volume` with a tolerance of
``GEOMETRY_ATOL`` (1e-3 mm for spacing and origin, 1e-3 for direction cosines). Distances use the reference
file's spacing (``spacing="mm"``) or unit voxels (``spacing="voxel"``).

The summary JSON (keys sorted, undefined numbers written as ``null``)::

    {"metric_per_case": [{"case", "prediction", "reference",
                          "metrics": {class: {"dice", "hd95", "asd", "n_pred", "n_ref"}}}],
     "mean": {class: {"dice", "dice_std", "hd95", "hd95_std", "asd", "asd_std", "n_cases",
                      "n_undefined_hd95"}},
     "foreground_mean": {"dice", "hd95", "asd"},
     "problems": [{"case", "file", "message"}],
     "settings": {"spacing", "empty_policy", "labels", ...}}

Means are over the scored cases; ``*_std`` is the population standard deviation (ddof 0). Distance means
leave out undefined (NaN) values, counted in ``n_undefined_hd95`` (ASD is undefined exactly when HD95 is).
``foreground_mean`` is the mean of the class means (nnU-Net's convention), over classes with a defined mean.
The CSV beside the JSON has one row per case and class.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast, get_args

import numpy as np
from tqdm import tqdm

from medcl.data.dataset import IMAGE_EXTENSIONS, Case, case_id_from_path
from medcl.data.validate import read_volume
from medcl.errors import DataError
from medcl.evaluation.metrics import ClassMetrics, EmptyPolicy, check_empty_policy, label_metrics

SpacingMode = Literal["mm", "voxel"]
SPACING_MODES: tuple[str, ...] = get_args(SpacingMode)
GEOMETRY_ATOL = 1e-3  # mm for spacing and origin, unitless for direction cosines
CSV_COLUMNS = ("case", "class", "label", "dice", "hd95", "asd", "n_pred", "n_ref", "prediction", "reference")


class Segmenter(Protocol):
    """What :func:`evaluate_predictor` needs of a predictor (``medcl.inference.predictor.Predictor``).

    ``segment`` returns the label map ``(X, Y, Z)`` in the first image's geometry and its 4x4 RAS affine,
    either as a ``(labels, affine)`` pair or as an object with ``.labels`` and ``.affine``.
    """

    def segment(self, image_paths: Sequence[Path]) -> Any: ...


@dataclass
class CaseProblem:
    """Why a case could not be scored (it is left out of every mean).

    Attributes:
        case: Case id.
        file: The file at fault, ``None`` when no single file is.
        message: One sentence.
    """

    case: str
    file: Path | None
    message: str

    def to_dict(self) -> dict[str, str | None]:
        return {
            "case": self.case,
            "file": None if self.file is None else str(self.file),
            "message": self.message,
        }


@dataclass
class CaseResult:
    """The metrics of one scored case.

    Attributes:
        case: Case id.
        prediction: The prediction file, ``None`` for a prediction made in memory (``--model``).
        reference: The reference label file.
        metrics: Foreground class value -> metrics.
    """

    case: str
    prediction: Path | None
    reference: Path
    metrics: dict[int, ClassMetrics]


@dataclass
class Summary:
    """Per-case metrics, problems and settings of one evaluation.

    Attributes:
        labels: Label value -> class name, background (0) included.
        spacing: ``"mm"`` or ``"voxel"``, the unit of the distances.
        empty_policy: The empty-mask policy the metrics were computed with.
        cases: The scored cases, in case-id order.
        problems: The cases that could not be scored, with the reason.
        settings: Provenance written under ``"settings"`` beside ``spacing``, ``empty_policy`` and
            ``labels`` (folders, model, dataset, subset).
        not_predicted: Reference cases without a prediction (folder mode): not scored, a warning only, as
            nnU-Net's ``evaluate_folder`` scores the predicted cases.
    """

    labels: dict[int, str]
    spacing: SpacingMode
    empty_policy: EmptyPolicy
    cases: list[CaseResult] = field(default_factory=list)
    problems: list[CaseProblem] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    not_predicted: list[str] = field(default_factory=list)

    @property
    def foreground(self) -> dict[int, str]:
        """Foreground value -> class name (every label but 0)."""
        return {value: name for value, name in sorted(self.labels.items()) if value != 0}

    def class_means(self) -> dict[str, dict[str, float | int | None]]:
        """Per-class means and standard deviations over the scored cases (see the module docstring)."""
        out: dict[str, dict[str, float | int | None]] = {}
        for value, name in self.foreground.items():
            per_case = [case.metrics[value] for case in self.cases]
            stats: dict[str, float | int | None] = {"n_cases": len(per_case)}
            for key in ("dice", "hd95", "asd"):
                values = np.array([getattr(m, key) for m in per_case], dtype=np.float64)
                defined = values[np.isfinite(values)]
                stats[key] = float(defined.mean()) if defined.size else None
                stats[f"{key}_std"] = float(defined.std()) if defined.size else None
            stats["n_undefined_hd95"] = int(sum(not math.isfinite(m.hd95) for m in per_case))
            out[name] = stats
        return out

    def foreground_mean(
        self, class_means: dict[str, dict[str, Any]] | None = None
    ) -> dict[str, float | None]:
        """Mean over foreground classes of the class means, for ``dice``, ``hd95`` and ``asd``."""
        class_means = self.class_means() if class_means is None else class_means
        out: dict[str, float | None] = {}
        for key in ("dice", "hd95", "asd"):
            values = [stats[key] for stats in class_means.values() if stats[key] is not None]
            out[key] = float(np.mean(values)) if values else None
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (see the module docstring); NaN becomes ``None``."""
        means = self.class_means()
        return {
            "metric_per_case": [
                {
                    "case": case.case,
                    "prediction": None if case.prediction is None else str(case.prediction),
                    "reference": str(case.reference),
                    "metrics": {
                        name: _metrics_dict(case.metrics[value]) for value, name in self.foreground.items()
                    },
                }
                for case in self.cases
            ],
            "mean": means,
            "foreground_mean": self.foreground_mean(means),
            "problems": [problem.to_dict() for problem in self.problems],
            "not_predicted": list(self.not_predicted),
            "settings": {
                **self.settings,
                "spacing": self.spacing,
                "empty_policy": self.empty_policy,
                "labels": {str(value): name for value, name in sorted(self.labels.items())},
            },
        }

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per case and foreground class, columns :data:`CSV_COLUMNS`; undefined values are ``""``."""
        rows = []
        for case in self.cases:
            for value, name in self.foreground.items():
                m = case.metrics[value]
                rows.append(
                    {
                        "case": case.case,
                        "class": name,
                        "label": value,
                        "dice": _csv_number(m.dice),
                        "hd95": _csv_number(m.hd95),
                        "asd": _csv_number(m.asd),
                        "n_pred": m.n_pred,
                        "n_ref": m.n_ref,
                        "prediction": "" if case.prediction is None else str(case.prediction),
                        "reference": str(case.reference),
                    }
                )
        return rows

    def write(self, path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
        """Write the JSON to ``path`` and the CSV beside it (``summary.json`` -> ``summary.csv``), atomically.

        Args:
            path: The JSON file; its folder is created if needed.
            overwrite: Replace existing files; without it an existing JSON or CSV is an error.

        Returns:
            ``(json_path, csv_path)``.

        Raises:
            DataError: A file exists and ``overwrite`` is false, ``path`` is a folder or ends in ``.csv``, or
                a file cannot be written.
        """
        json_path, csv_path = check_output(path, overwrite=overwrite)
        text = json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False) + "\n"
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.csv_rows())
        _write_atomic(json_path, text)
        _write_atomic(csv_path, buffer.getvalue())
        return json_path, csv_path

    def format_table(self) -> str:
        """Per-class table (Dice mean ± std, HD95, ASD, undefined count), the foreground mean and the counts."""
        unit = "mm" if self.spacing == "mm" else "vox"
        means = self.class_means()
        fg = self.foreground_mean(means)
        width = max([len("foreground"), *(len(name) for name in means)])
        header = f"{'class':<{width}}  {'Dice':>17}  {f'HD95 ({unit})':>10}  {f'ASD ({unit})':>10}  {'undefined':>9}"
        lines = [header]
        for name, stats in means.items():
            dice = f"{_fmt(stats['dice'], 4)} ± {_fmt(stats['dice_std'], 4)}"
            lines.append(
                f"{name:<{width}}  {dice:>17}  {_fmt(stats['hd95'], 2):>10}  {_fmt(stats['asd'], 2):>10}  "
                f"{stats['n_undefined_hd95']:>9}"
            )
        lines.append(
            f"{'foreground':<{width}}  {_fmt(fg['dice'], 4):>17}  {_fmt(fg['hd95'], 2):>10}  "
            f"{_fmt(fg['asd'], 2):>10}"
        )
        n_problem_cases = len({p.case for p in self.problems})
        scored = f"{len(self.cases)} cases scored ({self.empty_policy} empty policy)"
        if self.problems:
            lines.append(
                f"{scored}; {len(self.problems)} problems in {n_problem_cases} cases (left out of the means)"
            )
        else:
            lines.append(f"{scored}; no problems")
        return "\n".join(lines)

    def format_not_predicted(self) -> str:
        """A warning naming the reference cases without a prediction (empty string when there is none)."""
        if not self.not_predicted:
            return ""
        n, shown = len(self.not_predicted), ", ".join(self.not_predicted[:10])
        more = f" and {n - 10} more" if n > 10 else ""
        return f"warning: {n} reference case(s) have no prediction and are not scored: {shown}{more}"

    def format_problems(self) -> str:
        """One line per problem: case, file name, message (empty string when there is none)."""
        rows = [(p.case, p.file.name if p.file is not None else "-", p.message) for p in self.problems]
        if not rows:
            return ""
        rows.insert(0, ("case", "file", "problem"))
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in rows)


# ---------------------------------------------------------------------------------------------------------
# evaluation


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
        labels: Label value -> class name, background 0 included (:func:`load_labels`, :func:`infer_labels`).
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
    pred_dir, gt_dir = _folder(pred_dir, "Prediction"), _folder(gt_dir, "Reference")
    if pred_dir == gt_dir:
        raise DataError(f"--pred and --gt are the same folder {pred_dir}; give the reference labels' folder.")
    preds, pred_dupes = _label_files(pred_dir)
    refs, ref_dupes = _label_files(gt_dir)
    if not preds and not pred_dupes:
        raise DataError(f"{pred_dir} holds no prediction file ({', '.join(IMAGE_EXTENSIONS)}).")
    summary = Summary(
        labels=dict(labels),
        spacing=spacing_mode,
        empty_policy=empty_policy,
        settings={"prediction_dir": str(pred_dir), "reference_dir": str(gt_dir)},
    )
    case_ids = sorted(set(preds) | set(pred_dupes))
    summary.not_predicted = sorted((set(refs) | set(ref_dupes)) - set(case_ids))
    for case_id in tqdm(case_ids, desc="evaluating", unit="case", disable=not progress):
        dupes = pred_dupes.get(case_id, []) + ref_dupes.get(case_id, [])
        if dupes:
            names = ", ".join(p.name for p in dupes)
            summary.problems.append(
                CaseProblem(case_id, dupes[0], f"several files for one case ({names}); keep one.")
            )
            continue
        if case_id not in refs:
            summary.problems.append(
                CaseProblem(case_id, preds[case_id], f"prediction has no reference label in {gt_dir}.")
            )
            continue
        volume = _read_label(preds[case_id], case_id, "prediction")
        if isinstance(volume, CaseProblem):
            summary.problems.append(volume)
            continue
        result, problems = evaluate_case(
            case_id, volume[0], volume[1], refs[case_id], labels, spacing_mode, empty_policy, preds[case_id]
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
            segmentation = predictor.segment(list(case.images))
        except DataError as err:
            summary.problems.append(CaseProblem(case.id, case.images[0], f"prediction failed: {err}"))
            continue
        if hasattr(segmentation, "labels"):
            pred, affine = segmentation.labels, segmentation.affine
        else:
            pred, affine = segmentation
        reference = cast(Path, case.label)  # every case has a label: checked above
        result, problems = evaluate_case(
            case.id, np.asarray(pred), np.asarray(affine), reference, labels, spacing_mode, empty_policy
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
        unknown = [v for v in _values(array) if v not in labels]
        if unknown:
            shown = ", ".join(str(v) for v in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            message = f"{role} has label values [{shown}] that are not in the labels {sorted(labels)}."
            problems.append(CaseProblem(case_id, file, message))
    if problems:
        return None, problems
    spacing = tuple(float(s) for s in _spacing(ref_affine)) if spacing_mode == "mm" else None
    foreground = [value for value in sorted(labels) if value != 0]
    metrics = label_metrics(pred, ref, foreground, spacing, empty_policy=empty_policy)
    return CaseResult(case_id, prediction_file, reference, metrics), []


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
    spacing, ref_spacing = _spacing(affine), _spacing(reference)
    if not np.allclose(spacing, ref_spacing, rtol=0, atol=atol):
        parts.append(f"spacing {_vec(spacing)} vs {_vec(ref_spacing)}")
    origin, ref_origin = affine[:3, 3], reference[:3, 3]
    if not np.allclose(origin, ref_origin, rtol=0, atol=atol):
        parts.append(f"origin {_vec(origin)} vs {_vec(ref_origin)}")
    direction, ref_direction = _direction(affine), _direction(reference)
    if not np.allclose(direction, ref_direction, rtol=0, atol=atol):
        parts.append(
            f"direction {_vec(direction.T.ravel())} vs {_vec(ref_direction.T.ravel())} (axis cosines, RAS)"
        )
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# labels and output files


def load_labels(path: str | Path) -> dict[int, str]:
    """Label value -> class name from a ``dataset.json`` (MSD or nnU-Net v2 form) or the folder holding it.

    Raises:
        DataError: The file is missing, not JSON, or has no valid ``"labels"`` map.
    """
    # dataset.py owns the parsing of dataset.json; only its label map is needed here.
    from medcl.data.dataset import parse_labels, read_dataset_json

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
        values.update(_values(volume[0]))
    if not readable:
        raise DataError(f"Reference folder {gt_dir} holds no readable label file.")
    values.discard(0)
    return {0: "background", **{v: str(v) for v in sorted(values)}}


def check_output(path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """The JSON and CSV paths of a summary, checked before any work is done.

    Raises:
        DataError: ``path`` is a folder or a ``.csv`` file, or one of the two files exists and ``overwrite``
            is false.
    """
    json_path = Path(path).expanduser().resolve()
    if json_path.is_dir():
        raise DataError(
            f"Summary path {json_path} is a folder; give a file such as {json_path / 'summary.json'}."
        )
    if json_path.suffix.lower() == ".csv":
        raise DataError(
            f"Summary path {json_path} ends in .csv; give the JSON file (the CSV is written beside it)."
        )
    csv_path = json_path.with_suffix(".csv")
    if not overwrite:
        for existing in (json_path, csv_path):
            if existing.exists():
                raise DataError(
                    f"{existing} already exists; pass --overwrite to replace it or choose another -o."
                )
    return json_path, csv_path


# ---------------------------------------------------------------------------------------------------------
# helpers


def _check_modes(spacing_mode: str, empty_policy: str) -> None:
    if spacing_mode not in SPACING_MODES:
        raise ValueError(f"spacing_mode must be one of {', '.join(SPACING_MODES)}; got {spacing_mode!r}.")
    check_empty_policy(empty_policy)


def _folder(path: str | Path, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"{what} folder {folder} {state}.")
    return folder.resolve()


def _label_files(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Case id -> label file, and case id -> all its files for ids claimed by more than one file."""
    by_id: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        by_id.setdefault(case_id_from_path(entry, strip_channel=False), []).append(entry)
    files = {case_id: paths[0] for case_id, paths in by_id.items()}
    dupes = {case_id: paths for case_id, paths in by_id.items() if len(paths) > 1}
    return files, dupes


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
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
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


def _values(array: np.ndarray) -> list[int]:
    """The integer values present, sorted (bincount when they are small non-negative integers: fast)."""
    if array.size == 0:
        return []
    low, high = int(array.min()), int(array.max())
    if 0 <= low and high < 65536:
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel().astype(np.intp, copy=False)))]
    return [int(v) for v in np.unique(array)]


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def _direction(affine: np.ndarray) -> np.ndarray:
    spacing = _spacing(affine)
    return np.asarray(affine)[:3, :3] / np.where(spacing > 0, spacing, 1.0)[None, :]


def _vec(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _fmt(value: float | int | None, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _metrics_dict(m: ClassMetrics) -> dict[str, float | int | None]:
    return {
        "dice": _finite_or_none(m.dice),
        "hd95": _finite_or_none(m.hd95),
        "asd": _finite_or_none(m.asd),
        "n_pred": m.n_pred,
        "n_ref": m.n_ref,
    }


def _csv_number(value: float) -> str | float:
    return value if math.isfinite(value) else ""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"Cannot write {path}: {err.strerror or err}.") from err
