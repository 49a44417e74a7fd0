"""`medcl.suggest`: rankings on hand-built predictions, groups, diversity, splits, CSV, bad inputs.

Models are hand-built (a sign-of-intensity network, or a tiny untrained BasicUNet saved as a checkpoint): a
ranking only needs a network that produces probabilities, and these run in well under a second per case.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.config import build_config
from medcl.data.splits import Splits
from medcl.errors import ConfigError, DataError
from medcl.inference.predictor import Predictor
from medcl.inference.uncertainty import dice_agreement
from medcl.methods import DataSpec
from medcl.suggest import (
    CSV_COLUMNS,
    PoolCase,
    check_strategy,
    load_pool,
    montage,
    paired_networks,
    rank_groups,
    suggest,
    supported_strategies,
    updated_splits,
    write_csv,
)

HIPPO_SPEC = DataSpec(
    in_channels=1,
    num_classes=3,
    class_names=("background", "Anterior", "Posterior"),
    spatial_dims=2,
    patch_size=(64, 64),
)
TINY = "model.features=[4, 4, 8, 8, 16, 4]"


class SignOfImage(torch.nn.Module):
    """Class 1 wherever the preprocessed intensity is above its mean (0); confident far from 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x * 4, torch.zeros_like(x) - 9], dim=1)


def hand_built_predictor(net: torch.nn.Module | None = None) -> Predictor:
    cfg = build_config({"method": {"name": "supervised"}}, [TINY])
    return Predictor(cfg, HIPPO_SPEC, net or SignOfImage(), torch.device("cpu"), "hand-built", "fp32")


def pool_of(hippocampus: Path, ids: list[str]) -> list[PoolCase]:
    return [PoolCase(i, [hippocampus / "imagesTr" / f"{i}.nii.gz"]) for i in ids]


IDS = ["hippocampus_001", "hippocampus_004", "hippocampus_006", "hippocampus_008"]


# ------------------------------------------------------------------ rankings on hand-built predictions


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


def test_identical_networks_give_zero_disagreement_on_real_cases(hippocampus: Path) -> None:
    predictor = hand_built_predictor()
    net = SignOfImage()
    result = suggest(
        predictor, pool_of(hippocampus, IDS[:3]), "disagreement", 2, networks={"a": net, "b": net}
    )
    assert [r.score for r in result.rows] == [0.0, 0.0, 0.0]
    assert [r.rank for r in result.rows] == [1, 2, 3]
    assert [r.suggested for r in result.rows] == [True, True, False]


def test_a_network_flipping_half_of_one_case_ranks_it_first(hippocampus: Path) -> None:
    """A second network that disagrees on one case only (the one whose input it recognises)."""
    target = hippocampus / "imagesTr" / "hippocampus_004.nii.gz"
    predictor = hand_built_predictor()
    predictor.sw_batch_size = 10_000  # every window of a volume in one call: the call sees the whole case
    seen: list[float] = []

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(float(x.double().sum()))
            return SignOfImage()(x)

    predictor.probability_stats(predictor.preprocess_case([target])[1], net=Recorder())
    key = seen[0]

    class FlipsHalfOfOneCase(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = SignOfImage()(x)
            if abs(float(x.double().sum()) - key) < 1e-6 * max(abs(key), 1.0):
                w = x.shape[-2] // 2
                logits[..., :w, :] = logits[:, [1, 0, 2], :w, :]  # background <-> class 1 in one half
            return logits

    result = suggest(
        predictor,
        pool_of(hippocampus, IDS),
        "disagreement",
        1,
        networks={"a": SignOfImage(), "b": FlipsHalfOfOneCase()},
    )
    assert result.rows[0].case == "hippocampus_004" and result.rows[0].score > 0.2
    assert all(r.score == 0.0 for r in result.rows[1:])


def test_entropy_ranks_a_two_valued_copy_below_the_real_case(hippocampus: Path, tmp_path: Path) -> None:
    """Two intensities only: every voxel is far from the decision threshold, so the softmax is confident."""
    import nibabel as nib

    src = nib.load(hippocampus / "imagesTr" / "hippocampus_001.nii.gz")
    data = np.asanyarray(src.dataobj).astype(np.float32)
    sharp = tmp_path / "sharp.nii.gz"
    nib.save(nib.Nifti1Image(np.where(data > data.mean(), 1000.0, 1.0).astype(np.float32), src.affine), sharp)
    pool = [*pool_of(hippocampus, IDS[:2]), PoolCase("sharp", [sharp])]
    result = suggest(hand_built_predictor(), pool, "entropy", 1)
    assert result.rows[-1].case == "sharp"
    assert result.rows[0].score > result.rows[-1].score >= 0.0
    assert result.seconds_per_case > 0


# ------------------------------------------------------------------ groups


def test_groups_are_ranked_by_their_mean_and_budget_counts_groups(hippocampus: Path, tmp_path: Path) -> None:
    # Four real volumes under ACDC-like ids: two "patients" of two frames each.
    names = {"patient001_frame01": IDS[0], "patient001_frame02": IDS[1], "patient002_frame01": IDS[2],
             "patient002_frame02": IDS[3]}  # fmt: skip
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
    hippocampus: Path, tmp_path: Path, tiny_checkpoint
) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    predictor = Predictor.load(str(ckpt), device="cpu", precision="fp32")
    copy = tmp_path / "copy_of_001.nii.gz"
    shutil.copy(hippocampus / "imagesTr" / "hippocampus_001.nii.gz", copy)
    pool = [*pool_of(hippocampus, ["hippocampus_001", "hippocampus_004"]), PoolCase("copy_of_001", [copy])]
    entropy = {r.case: r.score for r in suggest(predictor, pool, "entropy", 1).rows}
    assert entropy["copy_of_001"] == pytest.approx(entropy["hippocampus_001"])
    result = suggest(predictor, pool, "diverse", 2)
    chosen = {r.case for r in result.suggested}
    assert "hippocampus_004" in chosen and len(chosen & {"hippocampus_001", "copy_of_001"}) == 1
    assert result.rows[-1].score == pytest.approx(0.0, abs=1e-6)  # the copy adds nothing
    # With the original labeled, its copy is the least useful case from the start.
    labeled = pool_of(hippocampus, ["hippocampus_001"])
    again = suggest(predictor, pool[1:], "diverse", 1, labeled=labeled)
    assert again.rows[0].case == "hippocampus_004" and again.rows[-1].case == "copy_of_001"


# ------------------------------------------------------------------ CSV, splits, montage


def test_csv_splits_and_montage(hippocampus: Path, tmp_path: Path) -> None:
    predictor = hand_built_predictor()
    result = suggest(predictor, pool_of(hippocampus, IDS), "entropy", 2)
    path = write_csv(result, tmp_path / "out" / "s.csv")
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert [r["suggested"] for r in rows] == ["1", "1", "0", "0"]
    assert {r["strategy"] for r in rows} == {"entropy"} and {r["model_run"] for r in rows} == {"hand-built"}
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)

    splits = Splits(labeled=["hippocampus_010"], unlabeled=[*IDS, "hippocampus_011"], val=["hippocampus_012"])
    new = updated_splits(splits, result)
    top = [r["case"] for r in rows[:2]]
    assert new.labeled == ["hippocampus_010", *top]
    assert new.unlabeled == [c for c in [*IDS, "hippocampus_011"] if c not in top]
    assert new.val == ["hippocampus_012"]
    assert new.meta["suggested"][0]["cases"] == top and new.meta["suggested"][0]["strategy"] == "entropy"
    new.save(tmp_path / "new.json")
    assert Splits.load(tmp_path / "new.json").labeled == new.labeled
    with pytest.raises(DataError, match="not in 'unlabeled'"):
        updated_splits(Splits(labeled=IDS), result)

    picture = montage(result)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.shape[1] == 2 * 192  # one tile per suggested case (at most 8)
    assert montage(result, cases=4).shape[1] == 4 * 192


def test_load_pool_from_splits_with_labeled_groups(hippocampus: Path, tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"labeled": IDS[:3], "unlabeled": [IDS[3]], "val": [], "test": []}))
    pool, labeled, splits = load_pool(hippocampus, path)
    assert [c.id for c in pool] == [IDS[3]] and [c.id for c in labeled] == IDS[:3]
    pool, labeled, _ = load_pool(hippocampus, path, labeled_groups=1)
    assert [c.id for c in pool] == [IDS[3], *IDS[1:3]] and [c.id for c in labeled] == IDS[:1]
    assert [Path(p).resolve() for p in pool[0].paths] == [
        (hippocampus / "imagesTr" / f"{IDS[3]}.nii.gz").resolve()
    ]
    path.write_text(json.dumps({"labeled": IDS, "unlabeled": [], "val": [], "test": []}))
    with pytest.raises(DataError, match="no unlabeled cases.*--labeled N"):
        load_pool(hippocampus, path)
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(hippocampus / "imagesTr" / f"{IDS[0]}.nii.gz", folder)
    pool, labeled, splits = load_pool(folder)
    assert [c.id for c in pool] == [IDS[0]] and labeled == [] and splits is None


# ------------------------------------------------------------------ bad inputs


def test_budget_and_pool_errors(hippocampus: Path) -> None:
    predictor = hand_built_predictor()
    pool = pool_of(hippocampus, IDS[:2])
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


def test_disagreement_needs_two_networks(tmp_path: Path, tiny_checkpoint) -> None:
    supervised = Predictor.load(str(tiny_checkpoint(tmp_path / "sup.pt")), device="cpu")
    assert paired_networks(supervised.method) == {}
    assert supported_strategies(supervised.method) == ["entropy", "tta", "diverse", "random"]
    with pytest.raises(ConfigError) as err:
        check_strategy("disagreement", supervised.method, "sup.pt")
    message = str(err.value)
    assert "sup.pt (method supervised) has one" in message
    assert "strategies this model supports: entropy, tta, diverse, random" in message
    with pytest.raises(ConfigError, match="supports: entropy, tta"):
        suggest(supervised, [PoolCase("x", [tmp_path / "never_read.nii.gz"])], "disagreement", 1)


def test_student_teacher_checkpoint_pairs_student_and_teacher(
    hippocampus: Path, tmp_path: Path, tiny_checkpoint
) -> None:
    """actionpp stores student (net) and EMA teacher; at initialisation they are equal: zero disagreement."""
    ckpt = tiny_checkpoint(tmp_path / "st.pt", "actionpp", ["method.anco.weight=0", "method.saacl.weight=0"])
    predictor = Predictor.load(str(ckpt), device="cpu", precision="fp32")
    assert set(paired_networks(predictor.method)) == {"student", "teacher"}
    assert "disagreement" in supported_strategies(predictor.method)
    result = suggest(predictor, pool_of(hippocampus, IDS[:2]), "disagreement", 1)
    assert [r.score for r in result.rows] == [0.0, 0.0]
