"""The result of one evaluation: per-case metrics and problems (:class:`Summary`), as JSON, CSV and tables.

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

The summaries are filled by the drivers of :mod:`medcl.evaluation.summary`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from medcl.errors import DataError
from medcl.evaluation.metrics import ClassMetrics, EmptyPolicy
from medcl.evaluation.uncertainty import CaseUncertainty, case_error_spearman
from medcl.runtime.files import write_text_atomic

__all__ = [
    "CSV_COLUMNS",
    "SPACING_MODES",
    "CaseProblem",
    "CaseResult",
    "SpacingMode",
    "Summary",
    "check_output",
]

SpacingMode = Literal["mm", "voxel"]
SPACING_MODES: tuple[str, ...] = get_args(SpacingMode)
CSV_COLUMNS = ("case", "class", "label", "dice", "hd95", "asd", "n_pred", "n_ref", "prediction", "reference")


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
        uncertainty: How the model's uncertainty map matches its errors (``evaluate --uncertainty``).
    """

    case: str
    prediction: Path | None
    reference: Path
    metrics: dict[int, ClassMetrics]
    uncertainty: CaseUncertainty | None = None


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

    def uncertainty_summary(self) -> dict[str, Any] | None:
        """Mean voxel-level error AUROC and the case-level Spearman correlation of uncertainty with error
        (:mod:`medcl.evaluation.uncertainty`); None when the cases carry no uncertainty."""
        scored = [case for case in self.cases if case.uncertainty is not None]
        if not scored:
            return None
        aurocs = [c.uncertainty.error_auroc for c in scored if c.uncertainty.error_auroc is not None]
        dice = []
        for case in scored:
            values = [case.metrics[v].dice for v in self.foreground if math.isfinite(case.metrics[v].dice)]
            dice.append(float(np.mean(values)) if values else float("nan"))
        pairs = [(c.uncertainty.mean, d) for c, d in zip(scored, dice, strict=True) if math.isfinite(d)]
        return {
            "n_cases": len(scored),
            "error_auroc_mean": float(np.mean(aurocs)) if aurocs else None,
            "case_error_spearman": case_error_spearman([m for m, _ in pairs], [d for _, d in pairs]),
            "per_case": {
                c.case: {
                    "mean_uncertainty": c.uncertainty.mean,
                    "error_auroc": c.uncertainty.error_auroc,
                    "n_errors": c.uncertainty.n_errors,
                }
                for c in scored
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (see the module docstring); NaN becomes ``None``."""
        means = self.class_means()
        uncertainty = self.uncertainty_summary()
        return {
            **({"uncertainty": uncertainty} if uncertainty is not None else {}),
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
    try:
        write_text_atomic(path, text)
    except OSError as err:
        raise DataError(f"Cannot write {path}: {err.strerror or err}.") from err
