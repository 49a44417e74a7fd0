"""The drivers: a stub predictor scored against the dataset's labels, its failures reported per case."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medcl.data.dataset import load_dataset
from medcl.data.volume import read_volume
from medcl.errors import DataError
from medcl.evaluation.summary import evaluate_predictor


class StubPredictor:
    """Returns each case's own label (Dice 1) or a failure, in both result forms a predictor may use."""

    class Result:
        def __init__(self, labels: np.ndarray, affine: np.ndarray) -> None:
            self.labels, self.affine = labels, affine

    def __init__(self, dataset: Path, fail: str) -> None:
        self.dataset, self.fail, self.calls = dataset, fail, 0

    def segment(self, image_paths):
        self.calls += 1
        case = Path(image_paths[0]).name
        if case.startswith(self.fail):
            raise DataError(f"cannot read {image_paths[0]}")
        labels, affine = read_volume(self.dataset / "labelsTr" / case)
        return (labels, affine) if self.calls % 2 else self.Result(labels, affine)


def test_evaluate_predictor_scores_and_reports(hippocampus: Path) -> None:
    info = load_dataset(hippocampus)
    cases = [info.case(i) for i in ("hippocampus_001", "hippocampus_004", "hippocampus_006")]
    summary = evaluate_predictor(StubPredictor(hippocampus, "hippocampus_004"), cases, info.labels)
    assert [c.case for c in summary.cases] == ["hippocampus_001", "hippocampus_006"]
    assert all(m.dice == 1.0 and m.hd95 == 0.0 for c in summary.cases for m in c.metrics.values())
    assert summary.cases[0].prediction is None
    [problem] = summary.problems
    assert problem.case == "hippocampus_004" and problem.message.startswith("prediction failed: cannot read")
    assert math.isclose(summary.foreground_mean()["dice"], 1.0)
