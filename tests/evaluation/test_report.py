"""Summaries: means with undefined distances, JSON/CSV files, tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medcl.errors import DataError
from medcl.evaluation.metrics import ClassMetrics
from medcl.evaluation.report import CaseProblem, CaseResult, Summary

LABELS = {0: "background", 1: "Anterior", 2: "Posterior"}
NAN = float("nan")


def hand_summary() -> Summary:
    """Three cases; case c has an undefined HD95/ASD for Posterior (a miss under the strict policy)."""

    def m(dice: float, hd95: float, asd: float) -> ClassMetrics:
        return ClassMetrics(dice=dice, hd95=hd95, asd=asd, n_pred=10, n_ref=12)

    ref = Path("/ref")
    cases = [
        CaseResult("a", Path("/pred/a.nii.gz"), ref / "a.nii.gz", {1: m(0.8, 2.0, 1.0), 2: m(0.6, 4.0, 2.0)}),
        CaseResult("b", Path("/pred/b.nii.gz"), ref / "b.nii.gz", {1: m(1.0, 0.0, 0.0), 2: m(0.9, 2.0, 1.0)}),
        CaseResult("c", Path("/pred/c.nii.gz"), ref / "c.nii.gz", {1: m(0.9, 1.0, 0.5), 2: m(0.0, NAN, NAN)}),
    ]
    problems = [CaseProblem("d", ref / "d.nii.gz", "no prediction for this case in /pred.")]
    return Summary(LABELS, "mm", "strict", cases, problems, {"prediction_dir": "/pred"})


def test_class_means_leave_out_and_count_undefined_distances() -> None:
    means = hand_summary().class_means()
    ant, post = means["Anterior"], means["Posterior"]
    assert ant["dice"] == pytest.approx(0.9) and ant["dice_std"] == pytest.approx(np.std([0.8, 1.0, 0.9]))
    assert ant["hd95"] == pytest.approx(1.0) and ant["asd"] == pytest.approx(0.5)
    assert ant["n_undefined_hd95"] == 0 and ant["n_cases"] == 3
    assert post["dice"] == pytest.approx(0.5)  # the miss counts as Dice 0
    assert post["hd95"] == pytest.approx(3.0) and post["hd95_std"] == pytest.approx(1.0)  # mean of 4 and 2
    assert post["asd"] == pytest.approx(1.5) and post["n_undefined_hd95"] == 1
    fg = hand_summary().foreground_mean()
    assert fg == pytest.approx({"dice": 0.7, "hd95": 2.0, "asd": 1.0})


def test_json_and_csv_files(tmp_path: Path) -> None:
    json_path, csv_path = hand_summary().write(tmp_path / "out" / "summary.json")
    assert csv_path == tmp_path / "out" / "summary.csv"
    text = json_path.read_text()
    assert "NaN" not in text  # undefined values are null: strict JSON
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert set(data) == {
        "metric_per_case",
        "mean",
        "foreground_mean",
        "problems",
        "not_predicted",
        "settings",
    }
    c = data["metric_per_case"][2]
    assert c["case"] == "c" and c["prediction"] == "/pred/c.nii.gz" and c["reference"] == "/ref/c.nii.gz"
    assert c["metrics"]["Posterior"] == {"dice": 0.0, "hd95": None, "asd": None, "n_pred": 10, "n_ref": 12}
    assert data["mean"]["Posterior"]["n_undefined_hd95"] == 1
    assert data["problems"] == [
        {"case": "d", "file": "/ref/d.nii.gz", "message": "no prediction for this case in /pred."}
    ]
    assert data["settings"] == {
        "empty_policy": "strict",
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "prediction_dir": "/pred",
        "spacing": "mm",
    }
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["case"], r["class"], r["label"]) for r in rows] == [
        (case, name, value) for case in "abc" for value, name in (("1", "Anterior"), ("2", "Posterior"))
    ]
    assert rows[5]["hd95"] == "" and float(rows[0]["dice"]) == 0.8
    assert sorted(p.name for p in json_path.parent.iterdir()) == [
        "summary.csv",
        "summary.json",
    ]  # no tmp left


def test_write_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    (tmp_path / "summary.csv").write_text("keep me")
    with pytest.raises(DataError, match="summary.csv already exists; pass --overwrite"):
        hand_summary().write(target)
    assert not target.exists() and (tmp_path / "summary.csv").read_text() == "keep me"
    hand_summary().write(target, overwrite=True)
    assert (tmp_path / "summary.csv").read_text().startswith("case,class,label,dice")
    with pytest.raises(DataError, match="is a folder"):
        hand_summary().write(tmp_path)


def test_table_shows_mean_std_and_undefined() -> None:
    table = hand_summary().format_table()
    assert "HD95 (mm)" in table
    line = next(line for line in table.splitlines() if line.startswith("Posterior"))
    assert line.split() == ["Posterior", "0.5000", "±", "0.3742", "3.00", "1.50", "1"]
    assert "3 cases scored" in table and "1 problems in 1 cases" in table
