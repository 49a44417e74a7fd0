"""Training samples from cached volumes: 2D slices or 3D patches, one batch per optimiser step.

Every batch is a pure function of ``(seed, rank, stream, step)``: the sampler draws the cases/slices of step
``s`` and the augmentation seeds from ``numpy.random.default_rng([seed, rank, stream, s])``. So a run resumed
at step ``s`` sees exactly the batches the uninterrupted run would have seen, DDP ranks see different data
without a distributed sampler, and loader workers need no seeding of their own.

The labeled stream and the unlabeled stream are two :class:`StepSampler` objects; :class:`TrainBatches`
zips them into ``{"labeled": {...}, "unlabeled": {...} | None}`` for the methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset, get_track_meta, set_track_meta
from monai.data.meta_tensor import MetaTensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from medcl.data.dataset import Case
from medcl.errors import DataError

_MAX_SEED = 2**31 - 1


def case_items(cases: Sequence[Case], *, with_label: bool) -> list[dict[str, Any]]:
    """MONAI data dicts (``image``: path or list of channel paths, ``label``) for a list of cases."""
    items = []
    for case in cases:
        images = [str(p) for p in case.images]
        item: dict[str, Any] = {"image": images[0] if len(images) == 1 else images, "case_id": case.id}
        if with_label:
            item["label"] = str(case.label)
        items.append(item)
    return items


class _NamedCaseTransform:
    """Runs the deterministic pipeline and turns any failure into a DataError naming the case's files."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, item: dict[str, Any]) -> Any:
        try:
            return self.transform(item)
        except Exception as exc:
            files = [item["image"]] if isinstance(item["image"], str) else list(item["image"])
            if item.get("label"):
                files.append(item["label"])
            cause = exc.__cause__ or exc
            raise DataError(
                f"cannot preprocess case {item.get('case_id')} ({', '.join(files)}): {cause}; "
                "run `medcl data check` on the dataset"
            ) from None


def preprocess_volumes(
    cases: Sequence[Case],
    transform: Callable,
    *,
    with_label: bool,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    num_workers: int = 2,
) -> list[dict[str, Any]]:
    """Run the deterministic pipeline once per case and return the results.

    ``cache="memory"`` uses MONAI's ``CacheDataset`` (threads, progress bar); ``"disk"`` uses
    ``PersistentDataset`` so a second run skips the work; ``"none"`` reloads at each call.
    """
    items = case_items(cases, with_label=with_label)
    if not items:
        return []
    transform = _NamedCaseTransform(transform)
    try:
        if cache == "disk":
            if cache_dir is None:
                raise ValueError("cache='disk' needs a cache_dir")
            ds: Dataset = PersistentDataset(items, transform=transform, cache_dir=str(cache_dir))
        elif cache == "memory":
            ds = CacheDataset(
                items,
                transform=transform,
                cache_rate=1.0,
                num_workers=num_workers,
                progress=progress,
                copy_cache=False,
            )
        else:
            ds = Dataset(items, transform=transform)
        return [ds[i] for i in range(len(ds))]
    except Exception as exc:  # MONAI wraps transform errors in RuntimeError: surface the case-level one
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None


def _plain(x: Any) -> Any:
    """Drop MONAI metadata from a tensor (metadata tracking costs time on every op of the hot path)."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def _pad_to(x: torch.Tensor, axes: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Zero-pad spatial ``axes`` of a ``(C, X, Y, Z)`` volume to at least ``size``, split as MONAI's symmetric
    ``SpatialPad`` splits it (``before = width // 2``)."""
    widths = [0] * 6  # F.pad order: last axis first, (before, after) each
    for axis, target in zip(axes, size, strict=True):
        width = max(int(target) - x.shape[1 + axis], 0)
        widths[2 * (2 - axis)] = width // 2
        widths[2 * (2 - axis) + 1] = width - width // 2
    return torch.nn.functional.pad(x, widths) if any(widths) else x


@dataclass
class StepSampler:
    """Draws ``batch_size`` samples for a given step from preprocessed volumes.

    Args:
        volumes: preprocessed cases, each ``{"image": (C, X, Y, Z), "label": (1, X, Y, Z)?}``.
        transform: random per-sample transform (see :func:`medcl.data.transforms.sample_transforms`).
        batch_transform: random transform of the stacked batch, called with the step's generator
            (see :class:`medcl.data.transforms.BatchAffine`).
        batch_size: samples per step.
        spatial_dims: 2 samples a slice along ``slice_axis``; 3 passes the whole volume to ``transform``
            (which crops a patch).
        slice_axis: spatial axis (0, 1, 2) of the slices, for 2D.
        stream: distinguishes the random streams of one run (labeled 0, unlabeled 1, ...).
        patch_size: when given, every volume is zero-padded once, symmetrically, to at least this size in the
            sampled axes (what ``SpatialPadd`` at the head of ``transform`` would do to every sample), so the
            per-sample pad is a no-op on the hot path.
    """

    volumes: list[dict[str, Any]]
    transform: Callable
    batch_size: int
    spatial_dims: int = 2
    slice_axis: int = 2
    stream: int = 0
    batch_transform: Callable | None = None
    patch_size: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if not self.volumes:
            raise ValueError("StepSampler needs at least one volume")
        keys = [k for k in ("image", "label") if k in self.volumes[0]]
        self.keys = keys
        # Plain tensors for fast slicing; the metadata is not needed for training samples.
        self._arrays = [{k: _plain(v[k]) for k in keys} for v in self.volumes]
        if self.patch_size is not None:
            axes = [a for a in range(3) if a != self.slice_axis] if self.spatial_dims == 2 else [0, 1, 2]
            self._arrays = [
                {k: _pad_to(v, axes, self.patch_size) for k, v in a.items()} for a in self._arrays
            ]
        if self.spatial_dims == 2:
            depth = [a["image"].shape[1 + self.slice_axis] for a in self._arrays]
            # (volume index, slice index) for every slice: slices are drawn uniformly over the dataset.
            self.index = np.array([(v, s) for v, n in enumerate(depth) for s in range(n)], dtype=np.int64)
        else:
            self.index = np.array([(v, -1) for v in range(len(self._arrays))], dtype=np.int64)

    def sample(self, seed: int, rank: int, step: int) -> dict[str, torch.Tensor]:
        """The batch of ``step``: ``image`` (B, C, *patch), ``label`` (B, 1, *patch) if labeled."""
        rng = np.random.default_rng([seed, rank, self.stream, step])
        picks = rng.integers(0, len(self.index), size=self.batch_size)
        # One reseed per step (not per sample): re-creating every transform's RandomState costs ~1 ms a sample.
        self.transform.set_random_state(seed=int(rng.integers(0, _MAX_SEED)))
        out: dict[str, list[torch.Tensor]] = {k: [] for k in self.keys}
        track = get_track_meta()
        set_track_meta(
            False
        )  # plain tensors through the transforms: MetaTensor bookkeeping doubles their cost
        try:
            for pick in picks:
                vol, sl = self.index[pick]
                arrays = self._arrays[vol]
                if self.spatial_dims == 2:
                    item = {k: arrays[k].select(1 + self.slice_axis, int(sl)) for k in self.keys}
                else:
                    item = dict(arrays)
                result = self.transform(item)
                if isinstance(result, list):  # RandCropByPosNegLabeld returns a list of samples
                    result = result[0]
                for k in self.keys:
                    out[k].append(_plain(torch.as_tensor(result[k])))
        finally:
            set_track_meta(track)
        batch = {k: torch.stack(v) for k, v in out.items()}
        batch["image"] = batch["image"].float()
        if "label" in batch:
            batch["label"] = batch["label"].long()
        if self.batch_transform is not None:
            batch = self.batch_transform(batch, rng)
        return batch


class TrainBatches(TorchDataset):
    """Map-style dataset whose item ``s`` is the batch of step ``s`` of every stream: ``{stream: batch}``."""

    def __init__(self, samplers: dict[str, Any], *, seed: int, rank: int = 0):
        self.samplers = samplers
        self.seed = seed
        self.rank = rank

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> dict[str, Any]:
        return {name: sampler.sample(self.seed, self.rank, step) for name, sampler in self.samplers.items()}


def _collate_none(batch: Any) -> Any:
    return batch


def step_loader(
    batches: TrainBatches, start: int, stop: int, num_workers: int, pin_memory: bool = False
) -> DataLoader:
    """Loader yielding the batches of steps ``start .. stop-1`` in order.

    ``num_workers == 0`` samples in the training process, which is fastest on small CPU machines (measured in
    ``benchmarks/bench_engine.py``: a worker process or a MONAI ``ThreadDataLoader`` thread competes with
    torch's compute threads for the same cores); GPU machines should prefetch with worker processes.
    """
    return DataLoader(
        batches,
        batch_size=None,
        sampler=range(start, stop),
        num_workers=num_workers,
        collate_fn=_collate_none,
        prefetch_factor=4 if num_workers > 0 else None,
        pin_memory=pin_memory,  # CUDA: page-locked batches, copied with non_blocking=True
    )
