"""Global contrastive loss of Chaitanya et al. [0] with the strategies G^R, G^{D-} and G^D.

Each volume is cut into S partitions along the slice axis; slices of the same partition index in different
volumes are assumed to show similar anatomy. The batch holds several augmented views of each sampled slice,
and every image carries three ids: its slice, its partition and its volume. With ℓ the pair loss of
:mod:`medcl.losses.ntxent` (Eq. 1 of [0]; other positives are not in the denominator)::

    L = (1/N) Σ_i Σ_{j∈Λ⁺(i)} −log( e^{s_ij/τ} / ( e^{s_ij/τ} + Σ_{k∈Λ⁻(i)} e^{s_ik/τ} ) )

and the strategies differ only in Λ⁺ and Λ⁻:

==========  =====================================================  ===============================
strategy    positives Λ⁺(i)                                        negatives Λ⁻(i)
==========  =====================================================  ===============================
``GR``      other views of i's slice                               every image of another slice
``GD-``     other views of i's slice                               every image of another partition
``GD``      other views of i's slice, and every image of the       every image of another partition
            same partition in **another volume**
==========  =====================================================  ===============================

G^R is SimCLR [1]. G^{D-} removes same-partition images of every volume (the anchor's own included) from
the negatives; G^D also pulls them together across volumes. In G^D, images of the same partition and the
same volume but another slice (absent from the authors' batches, which draw one slice per partition and
volume) are neither positive nor negative: neither paper nor code says they should be pulled together, and
G^{D-} already keeps them out of the negatives.

Differences from the authors' TensorFlow code (``krishnabits001/domain_specific_cl``, ``models.py``,
``utils.py``), where we follow the paper's intent:

* the G^D batch builder leaves 16 of its 48 images all-zero (``bt_size=12``) and they still enter the loss;
  here the loss only sees the images it is given;
* G^{D-} prunes negatives with a hard-coded stride of 4 (correct only for S = 4); here the partition ids
  decide, for any S and any batch order;
* G^D pairs each volume with one other volume of the batch and uses 4 positive pairs per group
  (x_i, x̂_i), (x_i, x_j), (x_j, x̂_j), (x̂_i, x̂_j); here, as the paper describes it, every view of every
  same-partition slice of another volume is a positive. With V views and m volumes in the batch an anchor
  has (V − 1) + (m − 1)·V positives, and since the loss sums over pairs its value (and gradient) grows
  with m: compare G^D losses only at equal batch composition;
* the G^R branch is commented out; here it is an ordinary strategy.

[0] K. Chaitanya, E. Erdil, N. Karani, E. Konukoglu, "Contrastive learning of global and local features for
    medical image segmentation with limited annotations", NeurIPS 2020. https://arxiv.org/abs/2006.10511
[1] T. Chen, S. Kornblith, M. Norouzi, G. Hinton, "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020. https://arxiv.org/abs/2002.05709
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from medcl.losses.ntxent import contrastive_loss, gather, gather_with_grad, same_id, self_pairs
from medcl.runtime.distributed import rank, world_size

GlobalStrategy = Literal["GR", "GD-", "GD"]
GLOBAL_STRATEGIES: tuple[str, ...] = get_args(GlobalStrategy)


class GlobalContrastiveLoss(nn.Module):
    """Partition-aware global contrastive loss (G^R, G^{D-}, G^D) of Chaitanya et al. [0].

    See the module docstring for the formula and the positive/negative sets of each strategy.

    Args:
        strategy: ``"GR"`` (SimCLR), ``"GD-"`` (no same-partition negatives) or ``"GD"`` (same-partition
            images of other volumes are positives; the paper's best setting).
        temperature: τ; 0.1 in the paper and code. Lower values sharpen the contrast and can make training
            unstable.
        gather_distributed: under DDP, contrast every rank's anchors against the images of all ranks (more
            negatives, and G^D positives from other ranks) with a gradient-carrying all-gather. Has no effect
            when not distributed. Every rank must then hold the same number of images.

    Raises:
        ValueError: unknown strategy or τ ≤ 0.

    Example:
        >>> loss_fn = GlobalContrastiveLoss("GD", temperature=0.1)
        >>> loss = loss_fn(z, slice_ids, partition_ids, volume_ids)  # z: (N, 128) from the g1 head
    """

    def __init__(
        self, strategy: GlobalStrategy = "GD", temperature: float = 0.1, gather_distributed: bool = True
    ) -> None:
        super().__init__()
        if strategy not in GLOBAL_STRATEGIES:
            raise ValueError(
                f"Unknown global strategy {strategy!r}; choose one of {', '.join(GLOBAL_STRATEGIES)}."
            )
        if temperature <= 0:
            raise ValueError(f"The temperature must be positive, got {temperature}.")
        self.strategy = strategy
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}, temperature={self.temperature}, gather_distributed={self.gather_distributed}"

    def pair_masks(
        self,
        slice_ids: Tensor,
        partition_ids: Tensor,
        volume_ids: Tensor,
        *,
        candidate_slice_ids: Tensor | None = None,
        candidate_partition_ids: Tensor | None = None,
        candidate_volume_ids: Tensor | None = None,
        self_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Positive and negative masks of the strategy (see the table in the module docstring).

        Args:
            slice_ids, partition_ids, volume_ids: ids of the anchors. Shape: (N,) each.
            candidate_slice_ids, candidate_partition_ids, candidate_volume_ids: ids of the candidates;
                default the anchors' own. Shape: (M,) each.
            self_mask: True where candidate j is anchor i; default the identity. Shape: (N, M), bool.

        Returns:
            ``(positives, negatives)``, each (N, M) bool, disjoint, without self-pairs.
        """
        cand_slice = slice_ids if candidate_slice_ids is None else candidate_slice_ids
        cand_part = partition_ids if candidate_partition_ids is None else candidate_partition_ids
        cand_vol = volume_ids if candidate_volume_ids is None else candidate_volume_ids
        if self_mask is None:
            self_mask = self_pairs(slice_ids.shape[0], cand_slice.shape[0], device=slice_ids.device)
        same_slice = same_id(slice_ids, cand_slice)  # (N, M), True on self-pairs
        same_partition = same_id(partition_ids, cand_part)  # (N, M)
        other_views = same_slice & ~self_mask  # (N, M)
        if self.strategy == "GR":
            return other_views, ~same_slice
        if self.strategy == "GD-":
            return other_views, ~same_partition
        across_volumes = same_partition & ~same_id(volume_ids, cand_vol)  # (N, M)
        return other_views | across_volumes, ~same_partition

    def forward(self, z: Tensor, slice_ids: Tensor, partition_ids: Tensor, volume_ids: Tensor) -> Tensor:
        """Global loss of one batch.

        Args:
            z: embeddings of every view in the batch (after the g1 head). Shape: (N, D).
            slice_ids: which slice each image is a view of; views of one slice share it. Only needs to be
                unique within this rank's batch (views of a slice never span ranks). Shape: (N,), int.
            partition_ids: partition index s of the slice (0..S-1). Shape: (N,), int.
            volume_ids: volume of the slice, unique across ranks under DDP (e.g. a dataset index).
                Shape: (N,), int.

        Returns:
            Scalar loss: Σ over positive pairs of ℓ / N.

        Raises:
            ValueError: wrong shapes, views of one slice with different partition or volume ids, or a batch
                with no positive pair (e.g. one view per slice under G^R).
        """
        if z.ndim != 2:
            raise ValueError(f"z must be a (N, D) matrix of embeddings, got shape {tuple(z.shape)}.")
        n = z.shape[0]
        for name, ids in (
            ("slice_ids", slice_ids),
            ("partition_ids", partition_ids),
            ("volume_ids", volume_ids),
        ):
            if tuple(ids.shape) != (n,):
                raise ValueError(f"{name} must have one id per image, shape ({n},); got {tuple(ids.shape)}.")
            if ids.is_floating_point():
                raise ValueError(f"{name} must be an integer tensor, got {ids.dtype}.")
        same_slice = same_id(slice_ids)  # (N, N)
        if bool((same_slice & ~(same_id(partition_ids) & same_id(volume_ids))).any()):
            raise ValueError("Views of one slice must share their partition and volume ids.")

        # Under DDP the candidates are every rank's images (gather_distributed=True); anchor i of rank r is
        # candidate r·N + i. Slice ids are made unique across ranks, since views of a slice never span ranks.
        r, w = (rank(), world_size()) if self.gather_distributed else (0, 1)
        ids = torch.stack(
            [slice_ids.long() * w + r, partition_ids.long(), volume_ids.long()], dim=1
        )  # (N, 3)
        if self.gather_distributed:  # both gathers return their input when not distributed
            candidates, candidate_ids = gather_with_grad(z), gather(ids)  # (M, D), (M, 3) with M = W·N
        else:
            candidates, candidate_ids = z, ids  # (N, D), (N, 3)
        positives, negatives = self.pair_masks(
            *ids.unbind(1),
            candidate_slice_ids=candidate_ids[:, 0],
            candidate_partition_ids=candidate_ids[:, 1],
            candidate_volume_ids=candidate_ids[:, 2],
            self_mask=self_pairs(n, candidates.shape[0], offset=r * n, device=z.device),
        )  # (N, M) each
        return contrastive_loss(z, positives, negatives, self.temperature, candidates=candidates)
