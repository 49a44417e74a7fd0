"""Cross-supervised, class-balanced pixel contrast of MCSC [0]: samplers, gathering and the loss kernel.

MCSC pools the pixel embeddings of two networks (a CNN and a Transformer) on the same images into one set.
Each embedding carries a label: the ground truth on labeled images, and on unlabeled images the **other**
network's prediction ("cross" supervision). Inside a group of pooled pixels (a spatial block, or a random
sample), anchor i with unit embedding z_i and label y_i costs ([0], Sec. 3; §2.3 of our methods digest)::

    N_c  = number of pixels of class c in the group
    D_i  = Σ_{a≠i} exp(z_i·z_a/τ) / (N_{y_a} − 1[y_a = y_i])
    ℓ_i  = −(1/|P(i)|) Σ_{p∈P(i)} [ z_i·z_p/τ − log(D_i + ε) ],     P(i) = {p ≠ i : y_p = y_i}
    L    = (1/|I|) Σ_{i∈I} ℓ_i,                                     I = anchors with |P(i)| ≥ 1

The denominator D_i is a **sum over classes of the mean** exp-similarity to that class: every class
contributes one averaged term whatever its pixel count ("class prevalence" weighting), so background does
not swamp small structures. Because log D_i does not depend on p, ℓ_i = log(D_i + ε) − z_i·m_i/τ with
m_i the mean embedding of i's positives, which the kernel computes from per-class sums in O(P·C·D).

Choices that differ from the authors' code [1], each with its reason (docs/methods.md, MCSC):

* Labels and embeddings are flattened in the **same** order. [1] flattens labels in (row, image, col) and
  features in (image, row, col) order, which scrambles the positive mask. A ``legacy_label_order`` switch to
  reproduce that is **not** offered: its scrambling depends on [1]'s block and view layout, which our
  vectorised grouping does not share, so emulating it would need its own gather for no scientific value.
* Anchors without positives (the only pixel of their class in a group) are **skipped**: they do not count in
  |I| (in [1] they add 0 but count). They still appear in every other anchor's denominator.
* Blocks **tile the whole map**: ``max(1, S // b)`` blocks per axis, the last one along each axis absorbing
  the remainder (so a block is b to 2b−1 pixels wide); [1] uses ``S // b − 1`` blocks per axis and never
  contrasts the bottom/right margin (and only a quarter of the coarse map).
* The number of classes comes from the caller (no hard-coded 4).

Vectorisation: all groups of a step are one batched tensor ``(G, P, D)`` with a validity mask (blocks at the
border are larger, so groups are padded). The G·P² similarities are computed in chunks of at most
``max_pairs`` entries; when more than one chunk is needed each chunk is wrapped in activation
checkpointing, so peak memory stays at one chunk's few P×P buffers instead of G·P² saved for backward.

Letters used in shape comments: V views (networks), B images per view, C channels, K classes, S spatial
sizes (H, W or D, H, W), N = prod(S), G groups, Q pixels per view in a group, P = V·Q pixels in a group,
D embedding size.

[0] Q. Liu, X. Gu, P. Henderson, F. Deligianni, "Multi-scale cross contrastive learning for
    semi-supervised medical image segmentation", BMVC 2023. https://arxiv.org/abs/2306.14293
[1] The authors' code, ``kathyliu579/MCSC`` @ 0fe180e, ``utils/supcon_loss_romdom_seleted.py``: read for the
    loss definition, the sampling and its quirks; no code is taken from it.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "SAMPLERS",
    "Sampler",
    "block_groups",
    "class_balanced_supcon",
    "gather_pixels",
    "grouped_supcon_loss",
    "random_groups",
    "tile_blocks",
]

Sampler = Literal["block", "random"]
#: Allowed values of the ``sampler`` argument / ``method.sampler`` key.
SAMPLERS: tuple[str, ...] = get_args(Sampler)


@functools.lru_cache(maxsize=32)
def _tile_blocks_cpu(shape: tuple[int, ...], block_size: int) -> tuple[Tensor, Tensor]:
    """CPU, cached body of :func:`tile_blocks` (the tiling only depends on the map shape)."""
    # Blocks per axis: at least one; the last block of an axis absorbs the remainder.
    per_axis = [max(1, s // block_size) for s in shape]
    # Block coordinate of every position along each axis: (s,) per axis.
    coords = [
        torch.clamp(torch.arange(s) // block_size, max=n - 1) for s, n in zip(shape, per_axis, strict=True)
    ]
    # Block id of every pixel, row-major over blocks: (N,)
    grids = torch.meshgrid(*coords, indexing="ij")
    block_id = torch.zeros(shape, dtype=torch.long)
    for grid, n in zip(grids, per_axis, strict=True):
        block_id = block_id * n + grid
    block_id = block_id.flatten()
    n_blocks = math.prod(per_axis)
    # Pixels sorted by block (stable: row-major inside a block), and each pixel's slot in its block.
    order = torch.argsort(block_id, stable=True)  # (N,)
    sorted_id = block_id[order]  # (N,)
    sizes = torch.bincount(block_id, minlength=n_blocks)  # (n_blocks,)
    starts = torch.cumsum(sizes, 0) - sizes  # (n_blocks,)
    slot = torch.arange(block_id.numel()) - starts[sorted_id]  # (N,)
    width = int(sizes.max())
    index = torch.zeros(n_blocks, width, dtype=torch.long)
    valid = torch.zeros(n_blocks, width, dtype=torch.bool)
    index[sorted_id, slot] = order
    valid[sorted_id, slot] = True
    return index, valid


def tile_blocks(
    shape: tuple[int, ...], block_size: int, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Cut a map into non-overlapping blocks that cover every pixel.

    Each axis of size s gets ``max(1, s // block_size)`` blocks of ``block_size`` pixels, the last one
    stretched to the end of the axis (b to 2b−1 pixels), so no margin is left out.

    Args:
        shape: Spatial sizes S of the map (2 or 3 values).
        block_size: Side b of a block, in pixels (≥ 1).
        device: Where to put the result (the tiling itself is computed once per shape on the CPU).

    Returns:
        ``index``: flat (row-major) pixel positions of each block, padded; ``valid``: True on real entries.
        Shape of both: ``(n_blocks, M)`` with M the largest block's pixel count.

    Raises:
        ValueError: When ``block_size`` is not a positive integer.

    Example:
        >>> index, valid = tile_blocks((5, 4), 2)  # 2 x 2 blocks; the bottom row of blocks is 3 pixels tall
        >>> valid.sum(1).tolist()
        [4, 4, 6, 6]
    """
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, e.g. 16; got {block_size!r}.")
    index, valid = _tile_blocks_cpu(tuple(int(s) for s in shape), block_size)
    return index.to(device), valid.to(device)


def block_groups(
    labels: Tensor, block_size: int, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Group pixels by spatial block, each image's block order shuffled independently ([0], [1]).

    Group k holds, for every image b, the pixels of its block ``perm_b[k]`` in every view (the views of one
    image share the permutation, so the two networks' embeddings of the same position meet in a group;
    different images contribute blocks from different positions). Groups whose valid labels are all
    background (0) in every view are dropped, as in [1].

    Args:
        labels: Class of every pixel of every view. Shape: ``(V, B, *S)``, integer.
        block_size: Side of a block in pixels (see :func:`tile_blocks`).
        generator: Random generator for the permutations (default: torch's global one, which the engine
            seeds and checkpoints).

    Returns:
        ``index``: flat positions inside each view's ``B·N`` pixels; ``valid``: True on real entries.
        Shape of both: ``(G, V, Q)`` with ``Q = B·M``; G ≤ the number of blocks per image.
    """
    v, b = labels.shape[:2]
    spatial = tuple(labels.shape[2:])
    n = math.prod(spatial)
    index, valid = tile_blocks(spatial, block_size, labels.device)  # (K, M) each
    k, m = index.shape
    # perm[b, k]: block of image b that goes to group k.
    perm = torch.argsort(torch.rand(b, k, generator=generator, device=labels.device), dim=1)  # (B, K)
    # Positions inside a view's flattened batch: image offset + the block's pixels.
    offsets = torch.arange(b, device=labels.device)[:, None, None] * n  # (B, 1, 1)
    pix = index[perm] + offsets  # (B, K, M)
    ok = valid[perm]  # (B, K, M)
    # Group-major, image next: (K, B, M) -> (K, B·M), the same for every view.
    pix = pix.transpose(0, 1).reshape(k, b * m)
    ok = ok.transpose(0, 1).reshape(k, b * m)
    pix = pix[:, None, :].expand(k, v, b * m)  # (K, V, Q)
    ok = ok[:, None, :].expand(k, v, b * m)  # (K, V, Q)
    # Drop groups with no foreground label in any view.
    lab = labels.reshape(v, b * n)  # (V, B·N)
    fg = (gather_labels(lab, pix) > 0) & ok  # (K, V, Q)
    keep = fg.flatten(1).any(1)  # (K,)
    return pix[keep].contiguous(), ok[keep].contiguous()


def random_groups(
    labels: Tensor, max_per_class: int, num_classes: int, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """One group of randomly drawn pixels: up to ``max_per_class`` of each class from each view.

    Pixels of a class are drawn uniformly without replacement across all images of a view; a class with
    fewer pixels contributes all of them. The group is dropped (G = 0) when it holds no foreground pixel.

    Args:
        labels: Class of every pixel of every view. Shape: ``(V, B, *S)``, integer in ``[0, num_classes)``.
        max_per_class: Cap on the pixels of one class per view (≥ 1).
        num_classes: K.
        generator: Random generator (default: torch's global one).

    Returns:
        ``index`` and ``valid`` as in :func:`block_groups`. Shape of both: ``(G, V, K·max_per_class)``,
        G ∈ {0, 1}.

    Raises:
        ValueError: When ``max_per_class`` is not a positive integer.
    """
    if not isinstance(max_per_class, int) or isinstance(max_per_class, bool) or max_per_class < 1:
        raise ValueError(f"max_per_class must be a positive integer, e.g. 512; got {max_per_class!r}.")
    v = labels.shape[0]
    lab = labels.reshape(v, -1)  # (V, B·N)
    total = lab.shape[1]
    # A random order per view, then a stable sort by class: each class's pixels end up in random order.
    order = torch.argsort(torch.rand(v, total, generator=generator, device=labels.device), dim=1)  # (V, B·N)
    cls, pos = torch.sort(torch.gather(lab, 1, order), dim=1, stable=True)  # (V, B·N) each
    members = torch.gather(order, 1, pos)  # (V, B·N) pixel positions, grouped by class
    counts = torch.zeros(v, num_classes, dtype=torch.long, device=labels.device)
    counts.scatter_add_(1, lab, torch.ones_like(lab))  # (V, K): pixels of each class per view
    starts = torch.cumsum(counts, 1) - counts  # (V, K)
    rank = torch.arange(total, device=labels.device)[None, :] - torch.gather(starts, 1, cls)  # (V, B·N)
    take = rank < max_per_class  # (V, B·N)
    # Slot c·cap + rank in a padded (V, K·cap) layout.
    width = num_classes * max_per_class
    slot = torch.where(take, cls * max_per_class + rank, width)  # overflow goes to a dropped extra slot
    index = torch.zeros(v, width + 1, dtype=torch.long, device=labels.device)
    valid = torch.zeros(v, width + 1, dtype=torch.bool, device=labels.device)
    index.scatter_(1, slot, members)
    valid.scatter_(1, slot, take)
    index, valid = index[:, :width], valid[:, :width]
    has_fg = bool(((torch.gather(lab, 1, index) > 0) & valid).any())
    g = 1 if has_fg else 0
    return index[None, :, :][:g], valid[None, :, :][:g]


def gather_labels(labels: Tensor, index: Tensor) -> Tensor:
    """Labels at group positions.

    Args:
        labels: Flattened labels per view. Shape: ``(V, B·N)``.
        index: Positions from a sampler. Shape: ``(G, V, Q)``.

    Returns:
        The labels. Shape: ``(G, V, Q)``.
    """
    g, v, q = index.shape
    # (V, G·Q) gather, back to group-major.
    flat = torch.gather(labels, 1, index.transpose(0, 1).reshape(v, g * q))
    return flat.reshape(v, g, q).transpose(0, 1)


def gather_pixels(features: Tensor, index: Tensor) -> Tensor:
    """Channel vectors of one view at group positions (channel-last, ready for a per-pixel head).

    Args:
        features: One view's feature maps. Shape: ``(B, C, *S)``.
        index: That view's positions from a sampler (``index[:, v]``). Shape: ``(G, Q)``.

    Returns:
        The vectors. Shape: ``(G, Q, C)``.
    """
    b, c = features.shape[:2]
    # (B, C, N) -> (C, B·N): one flat pixel axis matching the sampler's positions.
    flat = features.reshape(b, c, -1).transpose(0, 1).reshape(c, -1)
    g, q = index.shape
    return flat[:, index.reshape(-1)].reshape(c, g, q).permute(1, 2, 0)


def class_balanced_supcon(
    z: Tensor, labels: Tensor, valid: Tensor, temperature: float, num_classes: int, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Class-balanced supervised contrast of MCSC inside each group (module docstring, [0] Sec. 3).

    No Python loop over pixels or groups: similarities of all groups are one batched matmul. Entries with
    ``valid`` False (padding) are neither anchors nor candidates. The exp-sums are shifted by each anchor's
    largest logit, so any τ > 0 is safe in float32.

    Args:
        z: Embeddings; L2-normalised here. Shape: ``(G, P, D)``.
        labels: Class of each embedding, in ``[0, num_classes)`` where valid. Shape: ``(G, P)``, integer.
        valid: True for real entries. Shape: ``(G, P)``, bool.
        temperature: τ > 0.
        num_classes: K.
        eps: ε inside ``log(D_i + ε)`` ([1] uses 1e-6).

    Returns:
        ``loss``: ℓ_i of every entry (0 where it is no anchor); ``anchor``: True for anchors, i.e. valid
        entries with at least one positive (the set I). Shape of both: ``(G, P)``.
    """
    z = F.normalize(z.float(), dim=-1)  # (G, P, D)
    lab = torch.where(valid, labels, 0)  # (G, P): padding gets a harmless class index
    onehot = F.one_hot(lab, num_classes).to(z.dtype) * valid[..., None]  # (G, P, K)
    counts = onehot.sum(1)  # (G, K): N_c
    # Positive term: z_i · (Σ_{p∈c} z_p − z_i) / (τ (N_c − 1)) = mean positive logit, O(P·K·D).
    class_sum = onehot.transpose(1, 2) @ z  # (G, K, D)
    own_sum = torch.gather(class_sum, 1, lab[..., None].expand(-1, -1, z.shape[-1]))  # (G, P, D)
    own_count = torch.gather(counts, 1, lab)  # (G, P): N_{y_i}
    positive = ((z * own_sum).sum(-1) - (z * z).sum(-1)) / (temperature * (own_count - 1).clamp(min=1))
    # Denominator: logits s_ia/τ with self-pairs and padding masked, shifted by the row max.
    logits = torch.baddbmm(z.new_empty(()), z, z.transpose(1, 2), beta=0.0, alpha=1.0 / temperature)
    logits.masked_fill_(~valid[:, None, :], float("-inf"))  # (G, P, P): padding is no candidate
    logits.diagonal(dim1=1, dim2=2).fill_(float("-inf"))  # a ≠ i
    shift = logits.amax(-1, keepdim=True).detach()  # (G, P, 1)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))  # rows with no candidate
    expl = logits.sub_(shift).exp_()  # (G, P, P), in place: one P×P buffer is kept for backward
    class_exp = expl @ onehot  # (G, P, K): Σ_{a∈c, a≠i} exp(s_ia/τ − shift_i)
    # Each class's mean: divide by N_c, or N_c − 1 for the anchor's own class (≥ 1 where the sum is not 0).
    per_class = counts[:, None, :] - F.one_hot(lab, num_classes).to(z.dtype)  # (G, P, K)
    denom = (class_exp / per_class.clamp(min=1)).sum(-1)  # (G, P): D_i · exp(−shift_i)
    # log(D_i + ε) = logaddexp(shift_i + log D_i', log ε); the clamp only acts on candidate-free rows.
    log_denom = torch.logaddexp(
        shift[..., 0] + torch.log(denom.clamp(min=1e-30)), z.new_tensor(math.log(eps))
    )
    anchor = valid & (own_count >= 2)  # (G, P): anchors with at least one positive
    loss = torch.where(anchor, log_denom - positive, torch.zeros_like(positive))  # (G, P): ℓ_i
    return loss, anchor


def grouped_supcon_loss(
    z: Tensor,
    labels: Tensor,
    valid: Tensor,
    temperature: float,
    num_classes: int,
    *,
    eps: float = 1e-6,
    max_pairs: int = 2**24,
) -> Tensor:
    """Mean over groups of the per-group mean ℓ (:func:`class_balanced_supcon`), in memory-bounded chunks.

    Groups without an anchor are left out of the mean, as are blocks skipped by the sampler. With no anchor
    at all the result is ``0 * z.sum()`` (zero, and still connected to the graph so that DDP sees every
    projection parameter used).

    Args:
        z: Embeddings. Shape: ``(G, P, D)``.
        labels: Classes. Shape: ``(G, P)``.
        valid: Real entries. Shape: ``(G, P)``.
        temperature: τ > 0.
        num_classes: K.
        eps: ε in ``log(D_i + ε)``.
        max_pairs: Largest number of similarity entries (groups × P²) computed at once. Lower it when the
            contrast runs out of memory; above it chunks are recomputed in backward (checkpointing).

    Returns:
        The scalar loss.

    Raises:
        ValueError: On τ ≤ 0, ``max_pairs`` < 1 or shapes that do not match.

    Example:
        >>> z = torch.randn(2, 6, 8)
        >>> y = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 0]])
        >>> loss = grouped_supcon_loss(z, y, torch.ones(2, 6, dtype=torch.bool), 0.1, 3)
    """
    if temperature <= 0:
        raise ValueError(f"The temperature must be positive (e.g. 0.1); got {temperature}.")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1; got {max_pairs}.")
    if z.ndim != 3 or labels.shape != z.shape[:2] or valid.shape != z.shape[:2]:
        raise ValueError(
            f"Expected z (G, P, D) with labels and valid (G, P); got {tuple(z.shape)}, "
            f"{tuple(labels.shape)}, {tuple(valid.shape)}."
        )
    g, p = z.shape[:2]
    if g == 0 or p == 0:
        return z.sum() * 0.0
    # Similarities in float32 whatever the autocast dtype: exp(s/τ) at τ = 0.1 needs the range.
    with torch.autocast(z.device.type, enabled=False):
        step = max(1, max_pairs // (p * p))
        sums, counts = [], []
        for start in range(0, g, step):
            part = (z[start : start + step], labels[start : start + step], valid[start : start + step])
            if step < g and torch.is_grad_enabled() and z.requires_grad:
                ell, anchor = checkpoint(
                    class_balanced_supcon, *part, temperature, num_classes, eps, use_reentrant=False
                )
            else:
                ell, anchor = class_balanced_supcon(*part, temperature, num_classes, eps)
            sums.append(ell.sum(1))  # (chunk,)
            counts.append(anchor.sum(1))  # (chunk,)
        loss_sum, anchors = torch.cat(sums), torch.cat(counts)  # (G,) each
        used = anchors > 0
        if not bool(used.any()):
            return z.sum() * 0.0
        return (loss_sum[used] / anchors[used]).mean()
