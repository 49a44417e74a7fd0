"""evaluation/uncertainty.py: does the uncertainty map point at the errors (voxel AUROC, case Spearman)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from medcl.evaluation.summary import evaluate_predictor
from medcl.evaluation.uncertainty import auroc, case_error_spearman, case_uncertainty
from medcl.services.evaluate import summary_metrics


def test_auroc_by_hand() -> None:
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: of the 4 pairs only (0.35, 0.4) is misordered.
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0
    assert auroc(np.array([0.1, 0.9]), np.array([1, 0])) == 0.0
    assert auroc(np.full(6, 0.3), np.array([1, 0, 1, 0, 0, 0])) == 0.5  # a constant map: chance
    assert auroc(np.array([0.1, 0.2]), np.array([0, 0])) is None  # no error: undefined
    assert auroc(np.array([0.1, 0.2]), np.array([1, 1])) is None


def _cube_case() -> tuple[np.ndarray, np.ndarray]:
    """Reference: a 6^3 cube of class 1 in a 20^3 volume; prediction misses its top 2 slices."""
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[7:13, 7:13, 7:13] = 1
    pred = ref.copy()
    pred[7:13, 7:13, 11:13] = 0
    return pred, ref


def test_a_map_high_exactly_on_the_errors_scores_one_and_its_inverse_zero() -> None:
    pred, ref = _cube_case()
    wrong = (pred != ref).astype(np.float32)
    on = case_uncertainty(wrong, pred, ref)
    assert on.error_auroc == 1.0 and on.n_errors == 6 * 6 * 2
    assert case_uncertainty(1 - wrong, pred, ref).error_auroc == 0.0
    # Mean over the predicted foreground (x, y 7..12, z 7..10) grown by 3 voxels: a 12 x 12 x 10 box, 72 wrong.
    assert on.mean == pytest.approx(72 / (12 * 12 * 10))
    assert case_uncertainty(np.zeros_like(wrong), pred, ref).error_auroc == 0.5
    nothing = case_uncertainty(wrong, np.zeros_like(pred), ref)  # nothing predicted: every region voxel wrong
    assert nothing.mean == pytest.approx(72 / 20**3) and nothing.error_auroc is None  # the whole-volume mean
    with pytest.raises(ValueError, match="one shape"):
        case_uncertainty(wrong[:-1], pred, ref)


def test_case_spearman_by_hand() -> None:
    assert case_error_spearman([0.1, 0.2, 0.3], [0.9, 0.8, 0.5]) == pytest.approx(1.0)  # unsure -> wrong
    assert case_error_spearman([0.3, 0.2, 0.1], [0.9, 0.8, 0.5]) == pytest.approx(-1.0)
    assert case_error_spearman([0.1, 0.2], [0.9, 0.8]) is None  # under 3 cases
    assert case_error_spearman([0.1, 0.1, 0.1], [0.9, 0.8, 0.5]) is None  # constant


def test_evaluate_predictor_scores_the_uncertainty_of_real_cases(hippocampus: Path) -> None:
    """A stand-in predictor that erases one class and is unsure exactly there: AUROC 1, and the case with
    the larger erased class (lower Dice) has the higher mean uncertainty."""
    from medcl.data.dataset import load_dataset

    info = load_dataset(hippocampus)
    cases = info.cases[:3]

    class Eraser:
        def segment(self, image_paths, *, uncertainty: bool = False):
            case = next(c for c in cases if c.images[0] == image_paths[0])
            label = nib.load(str(case.label))
            ref = np.asarray(label.dataobj).astype(np.uint8)
            pred = ref.copy()
            pred[pred == 2] = 0  # the posterior class is missed
            return SimpleNamespace(
                labels=pred,
                affine=label.affine,
                uncertainty=(pred != ref).astype(np.float32) if uncertainty else None,
            )

    labels = {0: "background", 1: "Anterior", 2: "Posterior"}
    plain = evaluate_predictor(Eraser(), cases, labels)
    assert plain.uncertainty_summary() is None and "uncertainty" not in plain.to_dict()
    summary = evaluate_predictor(Eraser(), cases, labels, uncertainty=True)
    scores = summary.uncertainty_summary()
    assert scores["n_cases"] == 3 and scores["error_auroc_mean"] == 1.0
    assert set(scores["per_case"]) == {c.id for c in cases}
    assert summary.to_dict()["uncertainty"]["error_auroc_mean"] == 1.0
    metrics = summary_metrics(summary, "test")
    assert metrics["test/uncertainty/error_auroc_mean"] == 1.0
    # Every case has Dice 0 on Posterior, so the case error is 1 - Anterior Dice / 2 = 0.5 for all: constant.
    assert scores["case_error_spearman"] is None and "test/uncertainty/case_error_spearman" not in metrics
