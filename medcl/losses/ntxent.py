"""One contrastive kernel for the global and local losses of Chaitanya et al. [0], plus mask and DDP helpers.

For an anchor i with positives Λ⁺(i) and negatives Λ⁻(i) among the candidates, each positive pair (i, j)
costs ([0], Eq. 1)::

    ℓ(i, j) = −log( exp(s_ij/τ) / ( exp(s_ij/τ) + Σ_{k∈Λ⁻(i)} exp(s_ik/τ) ) )
            = −s_ij/τ + logaddexp( s_ij/τ, logsumexp_{k∈Λ⁻(i)} s_ik/τ )

with s the cosine similarity. The other positives of i are **not** in the denominator: only the pair's own
positive and i's negatives are (this is Chaitanya's form, not the SupCon form of Khosla et al. where all
positives share one denominator). The loss sums ℓ over every positive pair and divides by the number of
anchors, as the paper's code divides by the number of images in the batch.

Positives and negatives are boolean masks, built from index vectors with :func:`same_id` /
:func:`masks_from_ids` (an image id, a partition id, a class label: one kernel for all of them). Under DDP
the candidates are the embeddings of every rank, gathered with :func:`gather_with_grad` so that gradients
reach the rank that produced them; :func:`rank_self_mask` marks anchor i of rank r as candidate r·N + i.
Both helpers return the single-process answer when not distributed, so loss code has no DDP branches.

Letters used in shape comments: N anchors, M candidates, D embedding size.

[0] K. Chaitanya, E. Erdil, N. Karani, E. Konukoglu, "Contrastive learning of global and local features for
    medical image segmentation with limited annotations", NeurIPS 2020. https://arxiv.org/abs/2006.10511
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from medcl.runtime.distributed import is_distributed, rank, world_size

__all__ = [
    "contrastive_loss",
    "gather",
    "gather_with_grad",
    "masked_logsumexp",
    "masks_from_ids",
    "pair_loss",
    "rank_self_mask",
    "same_id",
    "self_pairs",
]


def masked_logsumexp(logits: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """``logsumexp`` of ``logits`` over ``dim`` restricted to ``mask``; ``-inf`` where the mask is empty.

    Masked-out entries are filled with ``-inf`` (not a large negative number), so an empty set contributes
    exactly nothing: ``logaddexp(x, -inf) == x``. Gradients stay finite for empty rows because
    ``masked_fill`` sends zero gradient to every filled entry.

    Args:
        logits: similarities divided by the temperature. Shape: any, e.g. (N, M).
        mask: True where an entry belongs to the set. Shape: broadcastable to ``logits``.
        dim: the dimension to reduce.

    Returns:
        The masked ``logsumexp``. Shape: ``logits`` without ``dim``.
    """
    return torch.logsumexp(logits.masked_fill(~mask, float("-inf")), dim=dim)


def pair_loss(positive_logits: Tensor, negative_lse: Tensor) -> Tensor:
    """Per-pair loss ``ℓ = −p + logaddexp(p, n)``: minus log of ``e^p / (e^p + e^n)``.

    Args:
        positive_logits: ``s_ij/τ`` of each (anchor, positive) pair. Shape: any.
        negative_lse: ``logsumexp_{k∈Λ⁻(i)} s_ik/τ`` of the pair's anchor (``-inf`` without negatives,
            which gives ℓ = 0). Shape: broadcastable to ``positive_logits``.

    Returns:
        ℓ for every entry. Shape: the broadcast shape.
    """
    return torch.logaddexp(positive_logits, negative_lse) - positive_logits


def contrastive_loss(
    z: Tensor,
    positives: Tensor,
    negatives: Tensor,
    temperature: float,
    *,
    candidates: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """Chaitanya's contrastive loss: sum of ℓ(i, j) over all positive pairs, divided by N.

    ℓ(i, j) = −log( exp(s_ij/τ) / ( exp(s_ij/τ) + Σ_{k∈Λ⁻(i)} exp(s_ik/τ) ) ), Eq. 1 of [0] (see the
    module docstring). Symmetric positive masks count each unordered pair in both directions.

    Args:
        z: anchor embeddings. Shape: (N, D).
        positives: True where candidate j is a positive of anchor i. Self-pairs must be False.
            Shape: (N, M), bool.
        negatives: True where candidate k is a negative of anchor i; disjoint from ``positives``.
            Shape: (N, M), bool.
        temperature: τ > 0.
        candidates: the embeddings compared against (with DDP: those of every rank, from
            :func:`gather_with_grad`). Default: ``z`` itself. Shape: (M, D).
        normalize: L2-normalise ``z`` and ``candidates`` first (cosine similarity). Pass False only when
            they are already unit vectors.

    Returns:
        Scalar loss: Σ_{(i,j) positive} ℓ(i, j) / N.

    Raises:
        ValueError: τ ≤ 0, shapes or dtypes that do not match, a pair both positive and negative, a
            self-pair in a mask (when ``candidates`` is None), or no positive pair at all.

    Example:
        >>> z = torch.randn(4, 8)
        >>> pos, neg = masks_from_ids(torch.tensor([0, 0, 1, 1]))
        >>> loss = contrastive_loss(z, pos, neg, temperature=0.1)
    """
    if temperature <= 0:
        raise ValueError(f"The temperature must be positive, got {temperature}.")
    if z.ndim != 2:
        raise ValueError(f"z must be a (N, D) matrix of embeddings, got shape {tuple(z.shape)}.")
    own_candidates = candidates is None
    candidates = z if candidates is None else candidates
    if candidates.ndim != 2 or candidates.shape[1] != z.shape[1]:
        raise ValueError(
            f"candidates must be (M, D) with the D of z; got {tuple(candidates.shape)} for z {tuple(z.shape)}."
        )
    expected = (z.shape[0], candidates.shape[0])
    for name, mask in (("positives", positives), ("negatives", negatives)):
        if tuple(mask.shape) != expected:
            raise ValueError(f"The {name} mask must have shape (N, M) = {expected}, got {tuple(mask.shape)}.")
        if mask.dtype != torch.bool:
            raise ValueError(f"The {name} mask must be boolean, got {mask.dtype}.")
    if bool((positives & negatives).any()):
        raise ValueError("A pair cannot be both positive and negative; the two masks must be disjoint.")
    if own_candidates and bool((positives.diagonal() | negatives.diagonal()).any()):
        raise ValueError(
            "Self-pairs (i, i) must be excluded from both masks; use self_pairs() to remove them."
        )
    if not bool(positives.any()):
        raise ValueError("There is no positive pair in the batch: every anchor needs a partner to contrast.")

    if normalize:
        z = F.normalize(z, dim=1)  # (N, D)
        candidates = F.normalize(candidates, dim=1)  # (M, D)
    logits = torch.einsum("nd,md->nm", z, candidates) / temperature  # (N, M): s_ij / τ
    negative_lse = masked_logsumexp(logits, negatives, dim=1)  # (N,): -inf for anchors without negatives
    losses = pair_loss(logits, negative_lse[:, None])  # (N, M): ℓ(i, j) for every pair
    return losses[positives].sum() / z.shape[0]  # scalar: Σ over positive pairs / N


def same_id(ids: Tensor, candidate_ids: Tensor | None = None) -> Tensor:
    """Boolean matrix ``ids[i] == candidate_ids[j]``.

    Args:
        ids: one id per anchor (slice, partition, volume, class...). Shape: (N,).
        candidate_ids: one id per candidate; default ``ids``. Shape: (M,).

    Returns:
        Shape: (N, M), bool.
    """
    candidate_ids = ids if candidate_ids is None else candidate_ids
    return ids[:, None] == candidate_ids[None, :]  # (N, M)


def self_pairs(
    n: int, m: int | None = None, *, offset: int = 0, device: torch.device | None = None
) -> Tensor:
    """Boolean matrix that is True at (i, offset + i): anchor i is candidate ``offset + i``.

    Args:
        n: number of anchors N.
        m: number of candidates M; default ``n``.
        offset: index of anchor 0 among the candidates (``rank * N`` after a DDP gather).
        device: device of the result.

    Returns:
        Shape: (N, M), bool.
    """
    m = n if m is None else m
    rows = torch.arange(n, device=device)  # (N,)
    cols = torch.arange(m, device=device)  # (M,)
    return (rows[:, None] + offset) == cols[None, :]  # (N, M)


def masks_from_ids(
    positive_ids: Tensor,
    negative_ids: Tensor | None = None,
    *,
    candidate_positive_ids: Tensor | None = None,
    candidate_negative_ids: Tensor | None = None,
    self_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Positive and negative masks from two id vectors: "same positive id" and "different negative id".

    * positives: ``positive_ids[i] == candidate_positive_ids[j]``, self-pairs removed;
    * negatives: ``negative_ids[i] != candidate_negative_ids[k]`` (self-pairs are never negatives).

    With one id vector this is SimCLR / supervised contrast (same id = positive, everything else =
    negative). With ``positive_ids`` = slice and ``negative_ids`` = partition it is Chaitanya's G^{D-}:
    other views of the slice are positives, and same-partition images are neither (removed from the
    negatives). The masks are disjoint whenever equal positive ids imply equal negative ids.

    Args:
        positive_ids: Shape: (N,).
        negative_ids: default ``positive_ids``. Shape: (N,).
        candidate_positive_ids: ids of the candidates (gathered under DDP); default ``positive_ids``.
            Shape: (M,).
        candidate_negative_ids: default ``candidate_positive_ids`` when ``negative_ids`` is None, else
            ``negative_ids`` (so pass it whenever the candidates are not the anchors). Shape: (M,).
        self_mask: True where candidate j is anchor i itself; default the identity (M = N), use
            :func:`rank_self_mask` after a DDP gather. Shape: (N, M), bool.

    Returns:
        ``(positives, negatives)``, each (N, M) bool.
    """
    if candidate_positive_ids is None:
        candidate_positive_ids = positive_ids
    if negative_ids is None:  # one id vector: "different id" is the complement of "same id"
        negative_ids = positive_ids
        candidate_negative_ids = (
            candidate_positive_ids if candidate_negative_ids is None else candidate_negative_ids
        )
    elif candidate_negative_ids is None:
        candidate_negative_ids = negative_ids
    if (
        candidate_negative_ids.shape != candidate_positive_ids.shape
        or negative_ids.shape != positive_ids.shape
    ):
        raise ValueError(
            "Positive and negative id vectors must have one id per anchor and per candidate; got anchors "
            f"{tuple(positive_ids.shape)} / {tuple(negative_ids.shape)} and candidates "
            f"{tuple(candidate_positive_ids.shape)} / {tuple(candidate_negative_ids.shape)}."
        )
    if self_mask is None:
        self_mask = self_pairs(
            positive_ids.shape[0], candidate_positive_ids.shape[0], device=positive_ids.device
        )
    positives = same_id(positive_ids, candidate_positive_ids) & ~self_mask  # (N, M)
    negatives = ~same_id(negative_ids, candidate_negative_ids) & ~self_mask  # (N, M)
    return positives, negatives


class _AllGatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward sums every rank's gradient of the gathered tensor and keeps this rank's rows.

    ``torch.distributed.nn.functional.all_gather`` exists for this, but it is deprecated (torch 2.13) and, on
    gloo, returns wrong gradients whenever the incoming gradient is not contiguous (it allocates its
    exchange buffers with ``empty_like``, which keeps the strides) -- which is what a similarity matrix's
    backward produces. Hence this small function (the ``GatherLayer`` of lightly / solo-learn).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.contiguous()  # (N, ...)
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)  # (W·N, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)  # (W·N, ...): our own contiguous buffer
        dist.all_reduce(grad)  # Σ over ranks of ∂L_rank / ∂(gathered tensor)
        n = grad.shape[0] // world_size()
        return grad[rank() * n : (rank() + 1) * n]  # (N, ...): the rows this rank contributed


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank in rank order, keeping gradients; ``x`` itself when not distributed.

    The backward hands each rank the sum, over all ranks, of the gradient of their losses with respect to
    its rows, so that DDP's averaging of parameter gradients gives the gradient of the mean loss. Every
    rank must pass the same shape.

    Args:
        x: Shape: (N, ...).

    Returns:
        Shape: (world_size · N, ...).
    """
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x)  # (W·N, ...)


def gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank in rank order, without gradient (for id vectors).

    Args:
        x: Shape: (N, ...).

    Returns:
        Shape: (world_size · N, ...); ``x`` itself when not distributed.
    """
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)  # (W·N, ...)


def rank_self_mask(n: int, device: torch.device | None = None) -> Tensor:
    """Self-pair mask against candidates gathered from every rank: anchor i of rank r is candidate r·N + i.

    Args:
        n: anchors on this rank (the same on every rank).
        device: device of the result.

    Returns:
        Shape: (N, world_size · N), bool; the identity when not distributed.
    """
    return self_pairs(n, n * world_size(), offset=rank() * n, device=device)
