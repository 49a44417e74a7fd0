"""Preprocessing pipelines and step-indexed sampling on real Hippocampus volumes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medcl.config import DataConfig
from medcl.data.dataset import Case, load_dataset
from medcl.data.sampling import StepSampler, TrainBatches, preprocess_volumes, step_loader
from medcl.data.transforms import sample_transforms, volume_transforms


@pytest.fixture(scope="module")
def volumes(hippocampus: Path):
    info = load_dataset(hippocampus)
    cfg = DataConfig()
    return preprocess_volumes(
        info.cases[:4], volume_transforms(cfg, "mri", with_label=True), with_label=True, progress=False
    )


def test_mri_normalisation_and_geometry(volumes, hippocampus: Path) -> None:
    vol = volumes[0]
    image, label = vol["image"], vol["label"]
    assert image.shape[0] == 1 and label.shape == image.shape
    assert image.dtype == torch.float32 and label.dtype == torch.int64
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-2
    assert set(torch.unique(label).tolist()) == {0, 1, 2}
    raw = nib.load(hippocampus / "labelsTr" / f"{vol['case_id']}.nii.gz")
    assert nib.aff2axcodes(raw.affine) == ("R", "A", "S")  # identity affine: RAS already
    np.testing.assert_array_equal(label[0].numpy(), np.asanyarray(raw.dataobj).astype(np.int64))


def test_ct_window_maps_to_unit_range(hippocampus: Path) -> None:
    info = load_dataset(hippocampus)
    cfg = DataConfig(ct_window=(0.0, 100.0))
    vol = preprocess_volumes(
        info.cases[:1], volume_transforms(cfg, "ct", with_label=False), with_label=False, progress=False
    )[0]
    assert float(vol["image"].min()) >= 0.0 and float(vol["image"].max()) <= 1.0


def test_simpleitk_formats_load_like_nifti(hippocampus: Path, tmp_path: Path) -> None:
    info = load_dataset(hippocampus)
    case = info.cases[0]
    for ext in (".mha", ".nrrd"):
        img = sitk.ReadImage(str(case.images[0]))
        lab = sitk.ReadImage(str(case.label))
        sitk.WriteImage(img, str(tmp_path / f"img{ext}"))
        sitk.WriteImage(lab, str(tmp_path / f"lab{ext}"))
        other = Case(case.id, (tmp_path / f"img{ext}",), tmp_path / f"lab{ext}")
        t = volume_transforms(DataConfig(), "mri", with_label=True)
        a = preprocess_volumes([case], t, with_label=True, cache="none", progress=False)[0]
        b = preprocess_volumes([other], t, with_label=True, cache="none", progress=False)[0]
        torch.testing.assert_close(a["image"].as_tensor(), b["image"].as_tensor())
        torch.testing.assert_close(a["label"].as_tensor(), b["label"].as_tensor())
        np.testing.assert_allclose(a["image"].affine.numpy(), b["image"].affine.numpy(), atol=1e-5)


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


def test_batch_affine_rotates_each_sample_and_keeps_labels() -> None:
    from medcl.data.transforms import BatchAffine

    torch.manual_seed(0)
    image = torch.rand(3, 1, 9, 9)
    label = torch.randint(0, 3, (3, 1, 9, 9))
    turn = BatchAffine(rotate_deg=90, scale=0.0, prob=1.0)
    # Force exact quarter turns (either direction) so the result can be compared with rot90.
    turn.theta = lambda n, dims, rng: torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]] * n)
    out = turn({"image": image, "label": label}, np.random.default_rng(0))
    for i in range(3):
        candidates = [torch.rot90(image[i], k, dims=(1, 2)) for k in (1, -1)]
        assert any(torch.allclose(out["image"][i], c, atol=1e-5) for c in candidates)
        labels = [torch.rot90(label[i], k, dims=(1, 2)) for k in (1, -1)]
        assert any(torch.equal(out["label"][i], c) for c in labels)
    # prob 0 is the identity; the same generator state gives the same warp.
    still = BatchAffine(30, 0.2, prob=0.0)({"image": image, "label": label}, np.random.default_rng(1))
    torch.testing.assert_close(still["image"], image, atol=1e-5, rtol=0)
    a = BatchAffine(30, 0.2)({"image": image}, np.random.default_rng(5))["image"]
    b = BatchAffine(30, 0.2)({"image": image}, np.random.default_rng(5))["image"]
    torch.testing.assert_close(a, b)
