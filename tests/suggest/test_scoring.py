"""`medcl.suggest.scoring`: disagreement and entropy scores of hand-built networks on real cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medcl.suggest import PoolCase, suggest


def test_identical_networks_give_zero_disagreement_on_real_cases(
    hand_built_predictor, sign_of_image, pool_of, ids
) -> None:
    predictor = hand_built_predictor()
    net = sign_of_image()
    result = suggest(predictor, pool_of(ids[:3]), "disagreement", 2, networks={"a": net, "b": net})
    assert [r.score for r in result.rows] == [0.0, 0.0, 0.0]
    assert [r.rank for r in result.rows] == [1, 2, 3]
    assert [r.suggested for r in result.rows] == [True, True, False]


def test_a_network_flipping_half_of_one_case_ranks_it_first(
    hippocampus: Path, hand_built_predictor, sign_of_image, pool_of, ids
) -> None:
    """A second network that disagrees on one case only (the one whose input it recognises)."""
    target = hippocampus / "imagesTr" / "hippocampus_004.nii.gz"
    predictor = hand_built_predictor()
    predictor.sw_batch_size = 10_000  # every window of a volume in one call: the call sees the whole case
    seen: list[float] = []

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(float(x.double().sum()))
            return sign_of_image()(x)

    predictor.probability_stats(predictor.preprocess_case([target])[1], net=Recorder())
    key = seen[0]

    class FlipsHalfOfOneCase(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = sign_of_image()(x)
            if abs(float(x.double().sum()) - key) < 1e-6 * max(abs(key), 1.0):
                w = x.shape[-2] // 2
                logits[..., :w, :] = logits[:, [1, 0, 2], :w, :]  # background <-> class 1 in one half
            return logits

    result = suggest(
        predictor,
        pool_of(ids),
        "disagreement",
        1,
        networks={"a": sign_of_image(), "b": FlipsHalfOfOneCase()},
    )
    assert result.rows[0].case == "hippocampus_004" and result.rows[0].score > 0.2
    assert all(r.score == 0.0 for r in result.rows[1:])


def test_entropy_ranks_a_two_valued_copy_below_the_real_case(
    hippocampus: Path, tmp_path: Path, hand_built_predictor, pool_of, ids
) -> None:
    """Two intensities only: every voxel is far from the decision threshold, so the softmax is confident."""
    import nibabel as nib

    src = nib.load(hippocampus / "imagesTr" / "hippocampus_001.nii.gz")
    data = np.asanyarray(src.dataobj).astype(np.float32)
    sharp = tmp_path / "sharp.nii.gz"
    nib.save(nib.Nifti1Image(np.where(data > data.mean(), 1000.0, 1.0).astype(np.float32), src.affine), sharp)
    pool = [*pool_of(ids[:2]), PoolCase("sharp", [sharp])]
    result = suggest(hand_built_predictor(), pool, "entropy", 1)
    assert result.rows[-1].case == "sharp"
    assert result.rows[0].score > result.rows[-1].score >= 0.0
    assert result.seconds_per_case > 0
