"""Partition-aware slice batches for 2D contrastive pre-training (Chaitanya et al. [0]; docs/methods.md).

Every volume is cut along the slice axis into ``S`` consecutive partitions (:func:`partition_bounds`);
slices from the same partition of different volumes show roughly the same anatomy, which the global
contrastive loss uses to choose positives and negatives (G^D-, G^D). One step's batch
(:class:`PartitionSampler`) takes ``m`` volumes, one slice uniformly from each of their ``S`` partitions,
and ``V`` views of each of these ``m * S`` slices:

* ``mode="global"`` (encoder stage): optionally the original slice, plus views made by a random
  crop-and-resize box followed by random brightness and contrast;
* ``mode="local"`` (decoder stage): intensity-only views (brightness and contrast), so that pixel ``u`` of
  one view and pixel ``u`` of another show the same tissue.

Like :class:`medcl.data.sampling.StepSampler`, a batch is a pure function of ``(seed, rank, stream, step)``:
every random draw comes from ``numpy.random.default_rng([seed, rank, stream, step])``, so a resumed run sees
the batches of the uninterrupted run and DDP ranks see different data without a distributed sampler.

Departures from the authors' code [1], each on purpose:

* Partitions cover every slice: the ``depth % S`` remainder slices go to the first partitions, one each
  (``numpy.array_split`` sizes), instead of never being sampled.
* Every image in a batch is a real slice: no zero-filled batch slots (bugs (a) and (b)); the batch size is
  exactly ``V * m * S``.
* Brightness and contrast are drawn per image; [1] feeds a whole batch through TensorFlow's
  ``random_brightness``/``random_contrast``, which draw one value per call, i.e. one per batch.
* Intensities are z-scored here (``volume_transforms`` for MRI), not min-max scaled to about [0, 1]:
  brightness is a shift in standard deviations, contrast scales around each slice's mean (as
  ``tf.image.adjust_contrast`` does), and the clip to [0, 1.5] of [1] is dropped because it would cut the
  whole negative half of a z-scored image.
* The crop box is placed over the part of the patch that holds image content (see
  :meth:`PartitionSampler.sample`); [1] draws its start from [10, 70) of a 192-pixel slice whose content
  fills the frame, which has the same purpose of keeping the box on anatomy.

- [0] Chaitanya, Erdil, Karani, Konukoglu. Contrastive learning of global and local features for medical
  image segmentation with limited annotations. NeurIPS 2020. https://arxiv.org/abs/2006.10511
- [1] ``krishnabits001/domain_specific_cl`` @ e5aae80: ``utils.py`` (``sample_minibatch_for_global_loss_opti``,
  ``crop_batch``), ``models.py`` (``brit_cont_net``); read, not copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.data.meta_tensor import MetaTensor
from monai.transforms import CenterSpatialCrop, Resize, SpatialPad

__all__ = ["MODES", "PartitionSampler", "partition_bounds"]

Mode = Literal["global", "local"]
#: Allowed values of ``PartitionSampler.mode``.
MODES: tuple[str, ...] = get_args(Mode)


def _is_int(value: object) -> bool:
    """True for Python and numpy integers, False for bools."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def partition_bounds(depth: int, partitions: int) -> list[tuple[int, int]]:
    """Split ``depth`` slices into ``partitions`` consecutive chunks that cover every slice.

    Chunk sizes differ by at most one; the first ``depth % partitions`` chunks get the extra slice, as
    ``numpy.array_split`` does. The authors' code uses chunks of ``depth // partitions`` and never samples
    the remainder.

    Args:
        depth: Number of slices of the volume along the slice axis.
        partitions: Number of partitions ``S`` (4 in [0]).

    Returns:
        ``S`` half-open ``(start, stop)`` slice ranges in order; ``stop`` of one is ``start`` of the next,
        the first starts at 0 and the last stops at ``depth``.

    Raises:
        ValueError: When ``partitions < 1`` or ``depth < partitions`` (a partition would be empty).

    Example:
        >>> partition_bounds(10, 4)
        [(0, 3), (3, 6), (6, 8), (8, 10)]
    """
    if not _is_int(partitions) or partitions < 1:
        raise ValueError(f"The number of partitions must be a positive integer; got {partitions!r}.")
    if not _is_int(depth) or depth < partitions:
        raise ValueError(
            f"A volume with {depth!r} slices cannot be cut into {partitions} non-empty partitions; "
            "use fewer partitions or drop volumes this thin."
        )
    size, extra = divmod(int(depth), int(partitions))
    # The first `extra` chunks hold size + 1 slices, the rest size.
    stops = np.cumsum([size + 1] * extra + [size] * (partitions - extra))
    starts = np.concatenate([[0], stops[:-1]])
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


@dataclass
class PartitionSampler:
    """Draws one pre-training batch per step: ``V`` views of one slice per partition of ``m`` volumes.

    Batch layout (``n = m * S`` slices, ``N = V * n`` images), view-major, then volume, then partition: image
    ``k * n + i * S + s`` is view ``k`` of the slice drawn from partition ``s`` of the ``i``-th volume drawn.
    So ``image[k * n:(k + 1) * n]`` is one complete view of all slices, the layout of [1]'s
    ``[originals, augmented 1, augmented 2]`` G^D- batch. The loss should not rely on the order, though:
    every image carries its ids, and positives are defined by comparing them (``sample_ids`` for views of
    the same slice, ``partition_ids`` for G^D's same-partition positives).

    Reference settings: the encoder stage of [0] (G^D-/G^D) uses ``mode="global"``, ``views=3``,
    ``include_original=True`` and ``m * S = 12`` (3 volumes x 4 partitions); the decoder stage (L^R) uses
    ``mode="local"``, ``views=2``, ``include_original=False``.

    Args:
        volumes: Preprocessed cases, each ``{"image": (C, X, Y, Z)}`` (output of
            :func:`medcl.data.sampling.preprocess_volumes` with ``with_label=False``). Every volume needs at
            least ``partitions`` slices along ``slice_axis``.
        patch_size: In-plane output size ``(P0, P1)``. Slices are padded with zeros (symmetric) and
            centre-cropped to it, as the training sampler pads; 192 x 192 at 1.37 mm in [0] for ACDC.
        volumes_per_batch: ``m``, volumes per step. Drawn without replacement; only when there are fewer
            volumes than ``m`` are they drawn with replacement (a volume can then appear twice, with
            independently drawn slices; its two copies get different ``sample_ids``).
        partitions: ``S``, partitions per volume (4 in [0]). Raise it for thick stacks of slices (more
            distinct anatomy per volume), lower it when volumes have few slices.
        views: ``V``, images per slice, at least 2 (3 for G^D-/G^D, 2 for the local loss).
        include_original: View 0 is the slice itself (padded/cropped only, no augmentation), as in [1]'s
            G^D-/G^D batches; False makes every view augmented.
        mode: ``"global"`` (crop-resize + intensity) or ``"local"`` (intensity only).
        slice_axis: Spatial axis (0, 1, 2) that slices are taken along (2 for axial stacks such as ACDC).
        stream: Distinguishes this sampler's random stream from the other samplers of a run.
        crop_fraction: ``"global"``: side of the crop box as a fraction of the patch side (100/192 in [1]);
            lower values give harder positives. The box is resized back to the patch bilinearly.
        brightness: Half-width of the uniform brightness shift, in intensity units (standard deviations
            for z-scored MRI; 0.3 in [1], where images span about [0, 1]).
        contrast: Range of the uniform contrast factor applied around each slice's mean ((0.7, 1.3) in [1]).

    Raises:
        ValueError: On an invalid argument or a volume with fewer slices than ``partitions``.

    Example:
        >>> sampler = PartitionSampler(volumes, patch_size=(64, 64), volumes_per_batch=3)
        >>> batch = sampler.sample(seed=0, rank=0, step=0)
        >>> batch["image"].shape  # 3 views x 3 volumes x 4 partitions
        torch.Size([36, 1, 64, 64])
    """

    volumes: list[dict[str, Any]]
    patch_size: Sequence[int]
    volumes_per_batch: int
    partitions: int = 4
    views: int = 3
    include_original: bool = True
    mode: Mode = "global"
    slice_axis: int = 2
    stream: int = 0
    crop_fraction: float = 100 / 192
    brightness: float = 0.3
    contrast: tuple[float, float] = (0.7, 1.3)

    def __post_init__(self) -> None:
        """Validate the settings and precompute every volume's partition bounds."""
        self._validate()
        self.patch_size = tuple(int(p) for p in self.patch_size)
        # Plain tensors: slicing and the transforms skip MONAI's metadata bookkeeping.
        self._images = [
            v["image"].as_tensor() if isinstance(v["image"], MetaTensor) else torch.as_tensor(v["image"])
            for v in self.volumes
        ]
        for i, image in enumerate(self._images):
            if image.ndim != 4:
                raise ValueError(
                    f"Volume {self._name(i)} must have an image of shape (C, X, Y, Z); "
                    f"got {tuple(image.shape)}."
                )
        axis = 1 + self.slice_axis
        depths = [int(image.shape[axis]) for image in self._images]
        # (n_volumes, S, 2): start/stop of every partition, so drawing a batch's slices is one numpy call.
        bounds = []
        for i, depth in enumerate(depths):
            try:
                bounds.append(partition_bounds(depth, self.partitions))
            except ValueError as exc:
                raise ValueError(f"Volume {self._name(i)}: {exc}") from None
        self._bounds = np.asarray(bounds, dtype=np.int64)
        # In-plane size of each volume's slices (the two spatial axes other than the slice axis).
        self._plane = [
            tuple(s for a, s in enumerate(image.shape[1:]) if a != self.slice_axis) for image in self._images
        ]
        # Pad/crop as the training sampler does: zero pad (symmetric), then centre crop (no random shift).
        self._pad = SpatialPad(self.patch_size, mode="constant")
        self._crop = CenterSpatialCrop(self.patch_size)
        # Every box has the same size, so one Resize call upsamples the whole stack of boxes.
        self._box = tuple(max(1, round(self.crop_fraction * p)) for p in self.patch_size)
        self._resize = Resize(self.patch_size, mode="bilinear", anti_aliasing=False)

    def _validate(self) -> None:
        """Raise ValueError with a sentence for the first invalid setting."""
        if not self.volumes:
            raise ValueError("PartitionSampler needs at least one volume.")
        if len(self.patch_size) != 2 or not all(_is_int(p) and p > 0 for p in self.patch_size):
            raise ValueError(
                f"patch_size must be two positive integers for 2D slices; got {self.patch_size!r}."
            )
        for name in ("volumes_per_batch", "partitions"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")
        if not _is_int(self.views) or self.views < 2:
            raise ValueError(
                f"views must be an integer of at least 2 (a positive pair needs two views); got {self.views!r}."
            )
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}; got {self.mode!r}.")
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2; got {self.slice_axis!r}.")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], e.g. 100/192; got {self.crop_fraction!r}.")
        if self.brightness < 0:
            raise ValueError(f"brightness must be at least 0, e.g. 0.3; got {self.brightness!r}.")
        if len(self.contrast) != 2 or not 0 < self.contrast[0] <= self.contrast[1]:
            raise ValueError(
                f"contrast must be (low, high) with 0 < low <= high, e.g. (0.7, 1.3); got {self.contrast!r}."
            )

    def _name(self, index: int) -> str:
        """A volume's case id if it has one, else its index (for error messages)."""
        case_id = self.volumes[index].get("case_id")
        return f"{index} ({case_id})" if case_id else str(index)

    @property
    def batch_size(self) -> int:
        """Images per batch, ``views * volumes_per_batch * partitions``."""
        return self.views * self.volumes_per_batch * self.partitions

    def _draw_slices(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The step's volumes ``(m,)`` and one slice index per partition of each ``(m, S)``."""
        n_volumes, m = len(self._images), self.volumes_per_batch
        volume_ids = rng.choice(n_volumes, size=m, replace=n_volumes < m)
        # (m, S) starts and stops; integers() draws each slice uniformly in its own [start, stop).
        bounds = self._bounds[volume_ids]
        slice_ids = rng.integers(bounds[..., 0], bounds[..., 1])
        return volume_ids.astype(np.int64), slice_ids.astype(np.int64)

    def slices(self, seed: int, rank: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Which slices the batch of ``step`` holds, without building images.

        Returns:
            ``(volume_ids, slice_ids)`` of shapes ``(m,)`` and ``(m, S)``: the drawn volumes (indices into
            ``volumes``) and, per volume, the slice drawn from each partition; the same draws
            :meth:`sample` makes.
        """
        return self._draw_slices(np.random.default_rng([seed, rank, self.stream, step]))

    def sample(self, seed: int, rank: int, step: int) -> dict[str, torch.Tensor]:
        """The batch of ``step``.

        The crop box of a ``"global"`` view has a fixed size (``crop_fraction`` of the patch) and is placed
        uniformly at random over the slice's content: along an axis where the content (the slice before
        zero padding) is at least as long as the box, the box stays inside it; where it is shorter, the box
        covers all of it. So a box is never mostly padding, whatever the slice size.

        Args:
            seed: The run's seed.
            rank: The process rank (0 when not distributed).
            step: The optimiser step.

        Returns:
            With ``N = views * m * S`` (layout in the class docstring):

            - ``"image"``: float32 ``(N, C, P0, P1)``;
            - ``"slice_ids"``: int64 ``(N,)``, the slice's index along ``slice_axis`` in its volume;
            - ``"partition_ids"``: int64 ``(N,)``, its partition ``s`` in ``[0, S)``;
            - ``"volume_ids"``: int64 ``(N,)``, its volume's index in ``volumes``;
            - ``"view_ids"``: int64 ``(N,)``, the view ``k`` in ``[0, views)`` (0 is the original slice when
              ``include_original``);
            - ``"sample_ids"``: int64 ``(N,)``, the slice's position ``i * S + s`` among the ``m * S`` drawn
              slices: views of one slice share it, and it stays unique when a volume is drawn twice.
        """
        rng = np.random.default_rng([seed, rank, self.stream, step])
        volume_ids, slice_ids = self._draw_slices(rng)
        m, parts = slice_ids.shape
        # Per drawn slice (n = m * S): its volume, in volume-then-partition order.
        slice_volume = np.repeat(volume_ids, parts)
        track = get_track_meta()
        # Plain tensors through the MONAI transforms: MetaTensor bookkeeping would double their cost.
        set_track_meta(False)
        try:
            # (n, C, P0, P1): the slices padded/cropped to the patch, the input of every view.
            base = torch.stack(
                [
                    self._crop(self._pad(self._images[v].select(1 + self.slice_axis, int(s))))
                    for v, s in zip(slice_volume, slice_ids.ravel(), strict=True)
                ]
            ).float()
            views = []
            for k in range(self.views):
                if k == 0 and self.include_original:
                    views.append(base)
                    continue
                # Spatial first, then intensity, the order of [1].
                x = self._crop_resize(base, slice_volume, rng) if self.mode == "global" else base
                views.append(self._intensity(x, rng))
        finally:
            set_track_meta(track)
        n = m * parts

        def tile(values: np.ndarray) -> torch.Tensor:
            # (n,) per slice -> (N,) per image, repeated for each view block.
            return torch.as_tensor(np.tile(values, self.views), dtype=torch.int64)

        return {
            "image": torch.cat(views),
            "slice_ids": tile(slice_ids.ravel()),
            "partition_ids": tile(np.tile(np.arange(parts), m)),
            "volume_ids": tile(slice_volume),
            "view_ids": torch.arange(self.views, dtype=torch.int64).repeat_interleave(n),
            "sample_ids": tile(np.arange(n)),
        }

    def _content(self, slice_volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` of each slice's content inside the patch, both ``(n, 2)``.

        Symmetric zero padding puts ``(P - H) // 2`` pixels before a slice shorter than the patch (MONAI's
        ``SpatialPad``); a longer slice is centre-cropped and fills the patch.
        """
        patch = np.asarray(self.patch_size)
        # (n, 2) in-plane sizes of the drawn slices.
        plane = np.asarray([self._plane[v] for v in slice_volume])
        lo = np.maximum(patch - plane, 0) // 2
        return lo, lo + np.minimum(plane, patch)

    def _crop_resize(
        self, x: torch.Tensor, slice_volume: np.ndarray, rng: np.random.Generator
    ) -> torch.Tensor:
        """Crop a random box from each image and resize it back to the patch.

        Args:
            x: The padded slices. Shape: ``(n, C, P0, P1)``.
            slice_volume: The volume of each slice. Shape: ``(n,)``.
            rng: The step's generator.

        Returns:
            The resized boxes. Shape: ``(n, C, P0, P1)``.
        """
        box, patch = np.asarray(self._box), np.asarray(self.patch_size)
        lo, hi = self._content(slice_volume)
        # (n, 2) range of box starts: inside the content where it fits, covering it where it does not.
        fits = hi - lo >= box
        first = np.where(fits, lo, np.maximum(hi - box, 0))
        last = np.where(fits, hi - box, np.minimum(lo, patch - box))
        start = rng.integers(first, last + 1)
        # (n, C, b0, b1): same-size boxes stack, so one Resize call upsamples them all.
        boxes = torch.stack(
            [img[:, a : a + box[0], b : b + box[1]] for img, (a, b) in zip(x, start.tolist(), strict=True)]
        )
        n, c = boxes.shape[:2]
        # Resize works on (channels, *spatial): fold the batch into the channels, (n * C, b0, b1).
        resized = self._resize(boxes.reshape(n * c, *self._box))
        return torch.as_tensor(resized).reshape(n, c, *self.patch_size)

    def _intensity(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Random brightness shift, then random contrast around the per-image, per-channel mean.

        ``y = (x + delta - mean(x + delta)) * c + mean(x + delta)``, with ``delta ~ U(-brightness,
        brightness)`` and ``c ~ U(contrast)`` drawn per image: an affine map of each image's intensities
        (the ``"local"`` views rely on it to keep positions aligned). Vectorised over the batch;
        MONAI's ``RandShiftIntensity``/``RandScaleIntensityFixedMean`` are the per-image equivalents but draw
        from their own random state, not from the step's generator.

        Args:
            x: Images. Shape: ``(n, C, P0, P1)``.
            rng: The step's generator.

        Returns:
            The augmented images. Shape: ``(n, C, P0, P1)``.
        """
        n = x.shape[0]
        # (n, 1, 1, 1) per-image parameters.
        delta = torch.as_tensor(rng.uniform(-self.brightness, self.brightness, n), dtype=x.dtype).view(
            n, 1, 1, 1
        )
        factor = torch.as_tensor(rng.uniform(*self.contrast, n), dtype=x.dtype).view(n, 1, 1, 1)
        shifted = x + delta
        # (n, C, 1, 1): the mean per image and channel, as TensorFlow's adjust_contrast uses.
        mean = shifted.mean(dim=(2, 3), keepdim=True)
        return (shifted - mean) * factor + mean
