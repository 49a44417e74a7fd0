"""Step-indexed sampling on real Hippocampus volumes (their preprocessing: tests/data/test_transforms.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medcl.config import DataConfig
from medcl.data.dataset import load_dataset
from medcl.data.sampling import StepSampler, TrainBatches, preprocess_volumes, step_loader
from medcl.data.transforms import sample_transforms, volume_transforms


@pytest.fixture(scope="module")
def volumes(hippocampus: Path):
    info = load_dataset(hippocampus)
    cfg = DataConfig()
    return preprocess_volumes(
        info.cases[:4], volume_transforms(cfg, "mri", with_label=True), with_label=True, progress=False
    )


def test_batches_are_a_function_of_seed_rank_and_step(volumes) -> None:
    cfg = DataConfig()
    sampler = StepSampler(volumes, sample_transforms(cfg.augment, [64, 64], with_label=True), batch_size=6)
    a = sampler.sample(seed=0, rank=0, step=5)
    b = sampler.sample(seed=0, rank=0, step=5)
    assert a["image"].shape == (6, 1, 64, 64) and a["label"].shape == (6, 1, 64, 64)
    torch.testing.assert_close(a["image"], b["image"])
    assert not torch.equal(a["image"], sampler.sample(seed=0, rank=0, step=6)["image"])
    assert not torch.equal(a["image"], sampler.sample(seed=0, rank=1, step=5)["image"])
    assert set(torch.unique(a["label"]).tolist()) <= {0, 1, 2}  # nearest interpolation keeps label values
    # A loader starting mid-run yields exactly the batches of those steps (what --resume relies on).
    batches = TrainBatches({"labeled": sampler}, seed=0)
    late = [b["labeled"]["image"] for b in step_loader(batches, 4, 6, num_workers=1)]
    torch.testing.assert_close(late[1], a["image"])


@pytest.mark.parametrize(
    ("dims", "patch", "pos"),
    [(2, [64, 64], None), (2, [48, 64], None), (3, [64, 40, 48], 0.5), (3, [64, 64, 16], 1.0)],
)
def test_padding_volumes_once_gives_the_same_batches(volumes, dims, patch, pos) -> None:
    """Hippocampus slices (~35x50) are smaller than the patch: pre-padded volumes skip the per-sample pad."""
    cfg = DataConfig()
    make = lambda padded: StepSampler(  # noqa: E731
        volumes,
        sample_transforms(cfg.augment, patch, with_label=True, pos_fraction=pos),
        batch_size=5,
        spatial_dims=dims,
        patch_size=patch if padded else None,
    )
    plain, padded = make(False), make(True)
    assert any(
        a["image"].shape != b["image"].shape for a, b in zip(plain._arrays, padded._arrays, strict=True)
    )
    for step in (0, 3):
        a, b = plain.sample(0, 0, step), padded.sample(0, 0, step)
        assert a["image"].shape[2:] == tuple(patch)
        torch.testing.assert_close(a["image"], b["image"])
        torch.testing.assert_close(a["label"], b["label"])


def test_3d_patches_with_foreground_sampling(volumes) -> None:
    t = sample_transforms(None, [16, 16, 16], with_label=True, pos_fraction=1.0)
    sampler = StepSampler(volumes, t, batch_size=4, spatial_dims=3)
    batch = sampler.sample(0, 0, 0)
    assert batch["image"].shape == (4, 1, 16, 16, 16)
    assert all(batch["label"][i].any() for i in range(4))  # every patch centred on foreground


def test_unlabeled_stream_has_no_label(hippocampus: Path) -> None:
    info = load_dataset(hippocampus)
    vols = preprocess_volumes(
        info.cases[:2],
        volume_transforms(DataConfig(), "mri", with_label=False),
        with_label=False,
        progress=False,
    )
    sampler = StepSampler(vols, sample_transforms(None, [64, 64], with_label=False), batch_size=3, stream=1)
    assert set(sampler.sample(0, 0, 0)) == {"image"}
