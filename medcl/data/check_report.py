"""What ``medcl data check`` found: :class:`Problem` and :class:`CaseReport`, as a table or as JSON.

The checks that fill the reports are in :mod:`medcl.data.validate`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medcl.data.cases import DatasetInfo
from medcl.errors import DataError
from medcl.runtime.files import write_text_atomic

__all__ = ["CaseReport", "Problem", "format_report", "reports_to_dict", "write_report_json"]


@dataclass
class Problem:
    """One finding about one file of one case."""

    case: str
    file: Path | None
    severity: Literal["error", "warning"]
    message: str


@dataclass
class CaseReport:
    """What was found in one case.

    Attributes:
        case: Case id.
        shape: 3D shape of the first readable image channel, ``None`` if none could be read.
        spacing: Voxel size in mm along each array axis, from that channel's affine.
        labels_found: Integer values present in the label volume (empty for unlabeled cases).
        problems: Errors and warnings, in the order found.
        orientation: Axis codes of the image (``"RAS"``), used to compare a case with the dataset majority.
    """

    case: str
    shape: tuple[int, ...] | None
    spacing: tuple[float, ...] | None
    labels_found: list[int]
    problems: list[Problem] = field(default_factory=list)
    orientation: str | None = None

    @property
    def errors(self) -> list[Problem]:
        """The problems of severity ``"error"``."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """The problems of severity ``"warning"``."""
        return [p for p in self.problems if p.severity == "warning"]


def format_report(reports: Sequence[CaseReport], info: DatasetInfo) -> str:
    """The table printed by ``medcl data check``: one line per problem, then a summary line.

    Args:
        reports: The case reports.
        info: Their dataset; file paths inside it are shown relative to its folder.

    Returns:
        The text, without a trailing newline.
    """
    rows = []
    for report in reports:
        for problem in report.problems:
            rows.append(
                (problem.case, problem.severity, _display_path(problem.file, info.root), problem.message)
            )
    lines = []
    if rows:
        header = ("case", "severity", "file", "message")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
        for row in [header, *rows]:
            lines.append(
                "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
                + "  "
                + row[3]
            )
    n_errors, n_warnings = _counts(reports)
    lines.append(f"{len(reports)} cases checked: {n_errors} errors, {n_warnings} warnings")
    return "\n".join(lines)


def reports_to_dict(reports: Sequence[CaseReport], info: DatasetInfo) -> dict[str, Any]:
    """JSON-ready form of the reports (what ``medcl data check --json`` writes).

    Args:
        reports: The case reports.
        info: Their dataset.

    Returns:
        ``{"dataset", "name", "cases_checked", "errors", "warnings", "cases": [...]}`` with full file paths.
    """
    n_errors, n_warnings = _counts(reports)
    return {
        "dataset": str(info.root),
        "name": info.name,
        "cases_checked": len(reports),
        "errors": n_errors,
        "warnings": n_warnings,
        "cases": [
            {
                "case": r.case,
                "shape": list(r.shape) if r.shape is not None else None,
                "spacing": list(r.spacing) if r.spacing is not None else None,
                "orientation": r.orientation,
                "labels_found": r.labels_found,
                "problems": [
                    {
                        "severity": p.severity,
                        "file": str(p.file) if p.file is not None else None,
                        "message": p.message,
                    }
                    for p in r.problems
                ],
            }
            for r in reports
        ],
    }


def write_report_json(reports: Sequence[CaseReport], info: DatasetInfo, path: str | Path) -> None:
    """Write :func:`reports_to_dict` to ``path`` atomically (its folder is created if needed).

    Raises:
        DataError: The file cannot be written.
    """
    path = Path(path).expanduser()
    try:
        write_text_atomic(path, json.dumps(reports_to_dict(reports, info), indent=1) + "\n")
    except OSError as err:
        raise DataError(f"Cannot write report {path}: {err.strerror or err}.") from err


def _counts(reports: Sequence[CaseReport]) -> tuple[int, int]:
    n_errors = sum(len(r.errors) for r in reports)
    n_warnings = sum(len(r.warnings) for r in reports)
    return n_errors, n_warnings


def _display_path(path: Path | None, root: Path) -> str:
    if path is None:
        return "-"
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
