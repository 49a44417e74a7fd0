"""`medcl.suggest.ranking`: ties, groups, diversity and the checks of `suggest` on its inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.errors import ConfigError, DataError
from medcl.inference.predictor import Predictor
from medcl.inference.uncertainty import dice_agreement
from medcl.suggest import PoolCase, rank_groups, suggest


def flip_half(labels: torch.Tensor) -> torch.Tensor:
    """Labels with foreground and background swapped in the first half of the first axis."""
    out = labels.clone()
    half = labels.shape[0] // 2
    out[:half] = (labels[:half] == 0).long()
    return out


def test_identical_predictions_disagree_zero_and_a_flipped_half_ranks_first() -> None:
    g = torch.Generator().manual_seed(0)
    cases = {f"case{i}": (torch.rand(16, 16, 4, generator=g) > 0.6).long() for i in range(5)}
    scores = {}
    for name, a in cases.items():
        b = flip_half(a) if name == "case3" else a.clone()
        scores[name] = 1.0 - dice_agreement(a, b, num_classes=2)
    ranking = rank_groups(scores)
    assert ranking[0][0] == "case3" and ranking[0][1] > 0.3
    assert all(score == 0.0 for _, score, _ in ranking[1:])
    # Ties (all zero) are ordered by name, whatever the pool's order.
    assert [key for key, _, _ in ranking[1:]] == ["case0", "case1", "case2", "case4"]


# ------------------------------------------------------------------ groups


def test_groups_are_ranked_by_their_mean_and_budget_counts_groups(
    hippocampus: Path, hand_built_predictor, ids
) -> None:
    # Four real volumes under ACDC-like ids: two "patients" of two frames each.
    names = {"patient001_frame01": ids[0], "patient001_frame02": ids[1], "patient002_frame01": ids[2],
             "patient002_frame02": ids[3]}  # fmt: skip
    pool = [PoolCase(n, [hippocampus / "imagesTr" / f"{i}.nii.gz"]) for n, i in names.items()]
    predictor = hand_built_predictor()
    per_case = suggest(predictor, pool, "entropy", 1)
    by_case = {r.case: r.score for r in per_case.rows}
    result = suggest(predictor, pool, "entropy", 1, group_by=r"patient\d+")
    assert [len(r.cases) for r in result.rows] == [2, 2]
    for row in result.rows:
        assert row.score == pytest.approx(np.mean([by_case[c] for c in row.cases]))
    assert result.rows[0].score >= result.rows[1].score
    assert result.suggested_cases == result.rows[0].cases  # a whole patient, both frames
    with pytest.raises(DataError, match=r"--budget 3 is larger than the pool: 2 unlabeled group\(s\)"):
        suggest(predictor, pool, "entropy", 3, group_by=r"patient\d+")
    random_rows = suggest(predictor, pool, "random", 2, group_by=r"patient\d+", seed=3).rows
    assert sorted(r.case for r in random_rows) == ["patient001", "patient002"]


# ------------------------------------------------------------------ diversity


def test_diverse_never_suggests_the_same_volume_twice(
    hippocampus: Path, tmp_path: Path, tiny_checkpoint, pool_of
) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    predictor = Predictor.load(str(ckpt), device="cpu", precision="fp32")
    copy = tmp_path / "copy_of_001.nii.gz"
    shutil.copy(hippocampus / "imagesTr" / "hippocampus_001.nii.gz", copy)
    pool = [*pool_of(["hippocampus_001", "hippocampus_004"]), PoolCase("copy_of_001", [copy])]
    entropy = {r.case: r.score for r in suggest(predictor, pool, "entropy", 1).rows}
    assert entropy["copy_of_001"] == pytest.approx(entropy["hippocampus_001"])
    result = suggest(predictor, pool, "diverse", 2)
    chosen = {r.case for r in result.suggested}
    assert "hippocampus_004" in chosen and len(chosen & {"hippocampus_001", "copy_of_001"}) == 1
    assert result.rows[-1].score == pytest.approx(0.0, abs=1e-6)  # the copy adds nothing
    # With the original labeled, its copy is the least useful case from the start.
    labeled = pool_of(["hippocampus_001"])
    again = suggest(predictor, pool[1:], "diverse", 1, labeled=labeled)
    assert again.rows[0].case == "hippocampus_004" and again.rows[-1].case == "copy_of_001"


# ------------------------------------------------------------------ bad inputs


def test_budget_and_pool_errors(hand_built_predictor, pool_of, ids) -> None:
    predictor = hand_built_predictor()
    pool = pool_of(ids[:2])
    with pytest.raises(
        DataError, match=r"--budget 3 is larger than the pool: 2 unlabeled case\(s\).*at most 2"
    ):
        suggest(predictor, pool, "entropy", 3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="--budget must be a whole number"):
            suggest(predictor, pool, "entropy", bad)
    with pytest.raises(DataError, match="empty"):
        suggest(predictor, [], "entropy", 1)
    with pytest.raises(ConfigError, match="unknown strategy 'bald'; choose one of disagreement, entropy"):
        suggest(predictor, pool, "bald", 1)
    with pytest.raises(DataError, match="twice"):
        suggest(predictor, [pool[0], pool[0]], "entropy", 1)
    with pytest.raises(DataError, match="does not match group_by"):
        suggest(predictor, pool, "entropy", 1, group_by=r"patient\d+")
