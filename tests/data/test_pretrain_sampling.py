"""Partition bounds and partition-aware pre-training batches on real Hippocampus and ACDC volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import get_track_meta

from medcl.config import DataConfig
from medcl.data.dataset import load_dataset
from medcl.data.pretrain_sampling import PartitionSampler, partition_bounds
from medcl.data.sampling import preprocess_volumes
from medcl.data.transforms import volume_transforms

# Patch per dataset: Hippocampus slices (about 35 x 51) get padded, ACDC slices (232-256 square) cropped.
PATCH = {"hippocampus": (64, 64), "acdc": (128, 128)}


def _preprocess(root: Path, count: int) -> list[dict]:
    cases = load_dataset(root).cases[:count]
    transform = volume_transforms(DataConfig(), "mri", with_label=False)
    return preprocess_volumes(cases, transform, with_label=False, progress=False)


@pytest.fixture(scope="module")
def hippo_volumes(hippocampus: Path) -> list[dict]:
    """4 real Hippocampus volumes (about 35 x 51 x 35, z-scored)."""
    return _preprocess(hippocampus, 4)


@pytest.fixture(scope="module")
def acdc_volumes(shared_data: Path) -> list[dict]:
    """3 real ACDC frames (10 slices each: partitions of 3, 3, 2, 2 slices with S = 4)."""
    return _preprocess(shared_data / "ACDC", 3)


@pytest.fixture(params=["hippocampus", "acdc"])
def dataset(request: pytest.FixtureRequest) -> tuple[list[dict], tuple[int, int]]:
    """(volumes, patch size) for each real dataset."""
    fixture = "hippo_volumes" if request.param == "hippocampus" else "acdc_volumes"
    return request.getfixturevalue(fixture), PATCH[request.param]


def fit_to_patch(image: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Reference pad/crop written without MONAI: zero pad symmetrically (extra pixel after), centre crop."""
    out = image
    for axis, size in enumerate(patch, start=1):
        length = out.shape[axis]
        if length < size:
            before = (size - length) // 2
            pad = [0, 0] * (out.ndim - 1 - axis) + [before, size - length - before]
            out = F.pad(out, pad)
        elif length > size:
            out = out.narrow(axis, (length - size) // 2, size)
    return out


def source_slices(volumes: list[dict], batch: dict, sampler: PartitionSampler) -> torch.Tensor:
    """(N, C, P0, P1): the padded/cropped slice every image of ``batch`` was made from, read from its ids."""
    return torch.stack(
        [
            fit_to_patch(
                volumes[v]["image"].as_tensor().select(1 + sampler.slice_axis, s), sampler.patch_size
            )
            for v, s in zip(batch["volume_ids"].tolist(), batch["slice_ids"].tolist(), strict=True)
        ]
    )


def affine_residual(y: torch.Tensor, x: torch.Tensor) -> tuple[float, float, float]:
    """Least-squares fit ``y = a * x + b`` over all pixels: ``(a, b, max |residual|)``."""
    design = torch.stack([x.flatten(), torch.ones(x.numel())], dim=1).double()
    coef = torch.linalg.lstsq(design, y.flatten().double().unsqueeze(1)).solution.squeeze(1)
    residual = (design @ coef - y.flatten().double()).abs().max()
    return float(coef[0]), float(coef[1]), float(residual)


# --- partition_bounds --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "parts"), [(4, 4), (10, 4), (35, 4), (38, 4), (7, 3), (13, 6), (8, 1), (18, 6), (11, 4)]
)
def test_partitions_cover_every_slice_once(depth: int, parts: int) -> None:
    bounds = partition_bounds(depth, parts)
    assert len(bounds) == parts
    covered = [s for start, stop in bounds for s in range(start, stop)]
    assert covered == list(range(depth))  # consecutive, disjoint, remainder included
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert sizes == [len(chunk) for chunk in np.array_split(np.arange(depth), parts)]


def test_partition_bounds_remainder_goes_to_the_first_partitions() -> None:
    assert partition_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert partition_bounds(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]


@pytest.mark.parametrize(("depth", "parts", "message"), [(3, 4, "cannot be cut"), (5, 0, "positive integer")])
def test_partition_bounds_rejects_impossible_splits(depth: int, parts: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        partition_bounds(depth, parts)


# --- batch composition -------------------------------------------------------------------------------------


def test_batch_composition_and_consistent_ids(dataset) -> None:
    volumes, patch = dataset
    m, parts, views = 3, 4, 3
    sampler = PartitionSampler(volumes, patch, volumes_per_batch=m, partitions=parts, views=views)
    batch = sampler.sample(seed=0, rank=0, step=3)
    n = m * parts
    assert sampler.batch_size == views * n
    assert batch["image"].shape == (views * n, 1, *patch) and batch["image"].dtype == torch.float32
    for key in ("slice_ids", "partition_ids", "volume_ids", "view_ids", "sample_ids"):
        assert batch[key].shape == (views * n,) and batch[key].dtype == torch.int64, key
    # Each view block holds every drawn slice once; each partition appears m times per view.
    assert torch.bincount(batch["view_ids"]).tolist() == [n] * views
    assert torch.bincount(batch["partition_ids"]).tolist() == [m * views] * parts
    for k in range(views):
        block = batch["view_ids"] == k
        assert sorted(batch["sample_ids"][block].tolist()) == list(range(n))
    # Views of one slice share its slice, partition and volume ids.
    for key in ("slice_ids", "partition_ids", "volume_ids"):
        per_view = batch[key].view(views, n)
        assert (per_view == per_view[0]).all(), key
    # Enough volumes: m distinct volumes, each with S slices from S different partitions.
    vols = batch["volume_ids"][:n].view(m, parts)
    assert len(set(vols[:, 0].tolist())) == m and (vols == vols[:, :1]).all()


def test_every_slice_lies_in_its_partition(dataset) -> None:
    volumes, patch = dataset
    sampler = PartitionSampler(volumes, patch, volumes_per_batch=2, mode="local", views=2)
    for step in range(3):
        batch = sampler.sample(seed=1, rank=0, step=step)
        for v, s, p in zip(
            batch["volume_ids"].tolist(),
            batch["slice_ids"].tolist(),
            batch["partition_ids"].tolist(),
            strict=True,
        ):
            depth = volumes[v]["image"].shape[1 + sampler.slice_axis]
            start, stop = partition_bounds(depth, sampler.partitions)[p]
            assert start <= s < stop
        # slices() names exactly the slices sample() builds.
        volume_ids, slice_ids = sampler.slices(seed=1, rank=0, step=step)
        n = slice_ids.size
        assert batch["slice_ids"][:n].tolist() == slice_ids.ravel().tolist()
        assert batch["volume_ids"][:n].tolist() == np.repeat(volume_ids, sampler.partitions).tolist()


def test_remainder_slices_are_sampled(acdc_volumes) -> None:
    # ACDC frames have 10 slices: the authors' chunks of 10 // 4 = 2 would never reach slices 8 and 9.
    sampler = PartitionSampler(acdc_volumes, PATCH["acdc"], volumes_per_batch=3)
    seen: dict[int, set[int]] = {v: set() for v in range(len(acdc_volumes))}
    for step in range(100):
        volume_ids, slice_ids = sampler.slices(seed=0, rank=0, step=step)
        for v, row in zip(volume_ids.tolist(), slice_ids.tolist(), strict=True):
            seen[v].update(row)
    for v, slices in seen.items():
        assert slices == set(range(acdc_volumes[v]["image"].shape[3])), v


def test_original_view_is_the_padded_or_cropped_slice(dataset) -> None:
    volumes, patch = dataset
    sampler = PartitionSampler(volumes, patch, volumes_per_batch=2, views=2, include_original=True)
    batch = sampler.sample(seed=2, rank=0, step=0)
    original = batch["view_ids"] == 0
    torch.testing.assert_close(batch["image"][original], source_slices(volumes, batch, sampler)[original])


def test_other_slice_axis(hippo_volumes) -> None:
    sampler = PartitionSampler(hippo_volumes, (64, 64), volumes_per_batch=2, views=2, slice_axis=0)
    batch = sampler.sample(seed=0, rank=0, step=0)
    original = batch["view_ids"] == 0
    torch.testing.assert_close(
        batch["image"][original], source_slices(hippo_volumes, batch, sampler)[original]
    )


def test_fewer_volumes_than_m_draws_with_replacement(hippo_volumes) -> None:
    sampler = PartitionSampler(hippo_volumes, (64, 64), volumes_per_batch=6)
    batch = sampler.sample(seed=0, rank=0, step=0)
    n = 6 * 4
    assert batch["image"].shape[0] == 3 * n
    assert set(batch["volume_ids"].tolist()) <= set(range(len(hippo_volumes)))
    assert sorted(batch["sample_ids"][:n].tolist()) == list(range(n))  # unique even for repeated volumes
    assert (batch["image"].flatten(1).abs().amax(dim=1) > 0).all()


@pytest.mark.parametrize("mode", ["global", "local"])
def test_no_all_zero_or_constant_images(dataset, mode: str) -> None:
    volumes, patch = dataset
    sampler = PartitionSampler(volumes, patch, volumes_per_batch=3, mode=mode, include_original=False)
    for step in range(2):
        flat = sampler.sample(seed=0, rank=0, step=step)["image"].flatten(1)
        assert (flat.abs().amax(dim=1) > 0).all()
        assert (flat.std(dim=1) > 1e-3).all()  # every image shows structure, not padding only


# --- determinism -------------------------------------------------------------------------------------------


def test_batches_are_a_function_of_seed_rank_stream_and_step(hippo_volumes) -> None:
    sampler = PartitionSampler(hippo_volumes, (64, 64), volumes_per_batch=3)
    a = sampler.sample(seed=0, rank=0, step=5)
    again = PartitionSampler(hippo_volumes, (64, 64), volumes_per_batch=3).sample(seed=0, rank=0, step=5)
    for key in a:
        torch.testing.assert_close(a[key], again[key])
    assert get_track_meta()  # restored after sampling
    for other in (
        sampler.sample(seed=0, rank=0, step=6),
        sampler.sample(seed=0, rank=1, step=5),
        sampler.sample(seed=1, rank=0, step=5),
        PartitionSampler(hippo_volumes, (64, 64), volumes_per_batch=3, stream=1).sample(
            seed=0, rank=0, step=5
        ),
    ):
        assert not torch.equal(a["image"], other["image"])


# --- augmentations -----------------------------------------------------------------------------------------


def test_local_views_differ_in_intensity_only(dataset) -> None:
    volumes, patch = dataset
    sampler = PartitionSampler(
        volumes, patch, volumes_per_batch=2, mode="local", views=2, include_original=False
    )
    batch = sampler.sample(seed=0, rank=0, step=0)
    sources = source_slices(volumes, batch, sampler)
    for image, source in zip(batch["image"], sources, strict=True):
        # Each view is a * x + b of its slice, pixel by pixel: positions still correspond between views.
        a, _, residual = affine_residual(image, source)
        assert residual < 1e-4
        assert 0.7 - 1e-4 <= a <= 1.3 + 1e-4
        # Contrast scales around the slice mean, so only the brightness shift moves the mean.
        assert abs(float(image.mean() - source.mean())) <= 0.3 + 1e-4
    # ...and the two views of a slice are not the same image.
    n = batch["image"].shape[0] // 2
    assert not torch.allclose(batch["image"][:n], batch["image"][n:])


def test_global_views_differ_spatially(dataset) -> None:
    volumes, patch = dataset
    sampler = PartitionSampler(volumes, patch, volumes_per_batch=2, mode="global", views=3)
    batch = sampler.sample(seed=0, rank=0, step=0)
    sources = source_slices(volumes, batch, sampler)
    augmented = batch["view_ids"] > 0
    for image, source in zip(batch["image"][augmented], sources[augmented], strict=True):
        # A crop-resize is no intensity map of the slice: the best affine fit leaves a large residual.
        _, _, residual = affine_residual(image, source)
        assert residual > 0.5
    n = int((batch["view_ids"] == 0).sum())
    assert not torch.allclose(batch["image"][n : 2 * n], batch["image"][2 * n :])


def test_global_view_is_a_resized_box_on_the_slice_content(hippo_volumes) -> None:
    # No intensity change: each view must equal one box of the original, upsampled bilinearly, and the box
    # must lie where the slice has content (Hippocampus slices are smaller than the patch: the rest is padding).
    patch = (64, 64)
    sampler = PartitionSampler(
        hippo_volumes, patch, volumes_per_batch=1, views=2, brightness=0.0, contrast=(1.0, 1.0)
    )
    batch = sampler.sample(seed=3, rank=0, step=0)
    n = sampler.partitions
    box = round(100 / 192 * patch[0])
    positions = [(a, b) for a in range(patch[0] - box + 1) for b in range(patch[1] - box + 1)]
    for original, view, v in zip(
        batch["image"][:n], batch["image"][n:], batch["volume_ids"][:n], strict=True
    ):
        crops = torch.stack([original[:, a : a + box, b : b + box] for a, b in positions])
        candidates = F.interpolate(crops, size=patch, mode="bilinear", align_corners=False)
        errors = (candidates - view).flatten(1).abs().amax(dim=1)
        best = int(errors.argmin())
        assert float(errors[best]) < 1e-4
        a, b = positions[best]
        height, width = (hippo_volumes[int(v)]["image"].shape[1 + i] for i in (0, 1))
        top, left = (patch[0] - height) // 2, (patch[1] - width) // 2
        # The content (about 35 x 51) is larger than the box on both axes, so the box must lie inside it.
        assert height >= box and width >= box
        assert top <= a and a + box <= top + height
        assert left <= b and b + box <= left + width


def test_include_original_false_augments_every_view(hippo_volumes) -> None:
    sampler = PartitionSampler(hippo_volumes, (64, 64), volumes_per_batch=2, views=2, include_original=False)
    batch = sampler.sample(seed=0, rank=0, step=0)
    sources = source_slices(hippo_volumes, batch, sampler)
    assert not any(torch.equal(img, src) for img, src in zip(batch["image"], sources, strict=True))


def test_channels_are_kept(hippo_volumes) -> None:
    volumes = [{"image": torch.cat([v["image"], 2 * v["image"]])} for v in hippo_volumes]
    sampler = PartitionSampler(volumes, (64, 64), volumes_per_batch=2)
    assert sampler.sample(seed=0, rank=0, step=0)["image"].shape == (24, 2, 64, 64)


# --- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"views": 1}, "views must be"),
        ({"mode": "dense"}, "mode must be one of"),
        ({"patch_size": (64, 64, 64)}, "patch_size must be"),
        ({"volumes_per_batch": 0}, "volumes_per_batch must be"),
        ({"crop_fraction": 0.0}, "crop_fraction must be"),
        ({"contrast": (1.3, 0.7)}, "contrast must be"),
        ({"brightness": -0.1}, "brightness must be"),
        ({"slice_axis": 3}, "slice_axis must be"),
        ({"partitions": 11}, "cannot be cut into 11"),
    ],
)
def test_invalid_settings_raise(acdc_volumes, kwargs: dict, message: str) -> None:
    settings = {"patch_size": (64, 64), "volumes_per_batch": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        PartitionSampler(acdc_volumes, **settings)


def test_thin_volume_error_names_the_case(acdc_volumes) -> None:
    with pytest.raises(ValueError, match=r"Volume 0 \(patient"):
        PartitionSampler(acdc_volumes, (64, 64), volumes_per_batch=2, partitions=11)
