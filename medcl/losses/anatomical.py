"""AnCo: anatomical contrast with class prototypes and hard queries (ACTION stage 3 [0], after ReCo [1]).

For every class ``c`` present among the valid pixels of a batch (all labeled pixels, plus unlabeled pixels
whose teacher confidence is at least 0.7), ``num_queries`` "hard" pixels - valid pixels of class ``c`` whose
predicted probability for ``c`` is below ``strong_threshold`` (0.97) - are drawn with replacement as queries
``r_q``. Each query is contrasted with one positive key, the class prototype ``r_k^{c,+}`` (the mean
representation of the valid pixels of ``c``, detached), and ``num_negatives`` negative keys ``r_k^-``: the
class of each negative is drawn from ``softmax(cos(proto_c, proto_k) / tau)`` over the other present classes
(classes that resemble ``c`` give more negatives), then a valid pixel is drawn uniformly within it (detached):

    L_anco = mean_c mean_{r_q ~ R_q^c} -log [ exp(r_q . r_k^{c,+} / tau)
                                               / (exp(r_q . r_k^{c,+} / tau) + sum_{r_k^-} exp(r_q . r_k^- / tau)) ]

with cosine similarities. Differences from the authors' code, all deliberate: (i) every draw is vectorised
(the reference samples negative pixel indices in a Python loop per query and class); (ii) the mean runs
over the classes that contribute queries; a class without hard pixels is skipped and not counted (the
reference divides by all present classes); (iii) the negatives of a class's queries are drawn through a
shared pool: ``NEGATIVE_POOL * M`` pixels are drawn i.i.d. from the class's negative distribution, and each
query takes ``M`` distinct pool slots (a window at a random offset). Slots chosen without looking at the
pool's values pick i.i.d. draws, so every query's ``M`` negatives have exactly the reference's distribution
and the expected loss is unchanged; queries of the same class now share negatives (two of them share
``M / NEGATIVE_POOL`` on average), so the estimate over queries is noisier. The similarities are then one ``(Q, D) x (D, P)``
product per class instead of a ``(Q, M, D)`` gather of negatives (268 MB per step at the reference's sizes,
4 classes x 256 queries x 512 negatives x 128 dims), and only the drawn rows are normalised: forward +
backward 32 vs 273 ms on 65536 pixels and 2 threads (``benchmarks/bench_losses.py --only anco-acdc``). With fewer than two present classes there are no negatives and
the loss is 0. ACTION uses ``tau = 0.5``; ACTION++ schedules it with ATS (``medcl.schedules``).

The sampling (:func:`sample_anco`) and the loss on given samples (:func:`anco_loss_from_samples`) are
separate so that the tests can check the loss against a slow loop on the same draws.

Shape letters: N valid pixels, D representation size, K classes, V present classes, Q queries per class,
M negatives per query, P pooled negatives per class.

- [0] C. You, W. Dai, Y. Min, L. Staib, J. S. Duncan, "Bootstrapping Semi-supervised Medical Image
  Segmentation with Anatomical-aware Contrastive Distillation", IPMI 2023, https://arxiv.org/abs/2206.02307
- [1] S. Liu, S. Zhi, E. Johns, A. J. Davison, "Bootstrapping Semantic Segmentation with Regional Contrast",
  ICLR 2022, https://arxiv.org/abs/2104.04465
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AncoSamples",
    "anatomical_contrast_loss",
    "anco_loss_from_samples",
    "flatten_valid",
    "sample_anco",
    "sample_pixels",
]

#: The negative pool of a class holds NEGATIVE_POOL x num_negatives i.i.d. draws (see the module docstring).
NEGATIVE_POOL = 2


def sample_pixels(
    labels: Tensor, candidates: Tensor, classes: Tensor, num_classes: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Draw one candidate pixel of the requested class for every entry of ``classes`` (with replacement).

    Vectorised: candidates are sorted by class once, and a draw for class ``k`` is
    ``sorted[offset_k + floor(u * count_k)]`` with ``u ~ U[0, 1)``.

    Args:
        labels: Class of every pixel. Shape: ``(N,)``, int64 in ``[0, num_classes)``.
        candidates: Which pixels may be drawn. Shape: ``(N,)``, bool.
        classes: The class of each draw. Any shape ``(*A)``, int64.
        num_classes: ``K``.
        generator: Random source (``None``: torch's global generator).

    Returns:
        ``(index, ok)``: the drawn pixel indices into ``labels`` (0 where impossible) and whether the class
        had any candidate. Both of shape ``(*A)``.
    """
    cand = candidates.nonzero().squeeze(1)  # (N_c,)
    cand_labels = labels[cand]  # (N_c,)
    order = torch.argsort(cand_labels, stable=True)
    by_class = cand[order]  # (N_c,) candidate pixel indices grouped by class
    counts = torch.bincount(cand_labels, minlength=num_classes)  # (K,)
    offsets = torch.cumsum(counts, 0) - counts  # (K,)
    count = counts[classes]  # (*A)
    u = torch.rand(classes.shape, generator=generator, device=labels.device)  # (*A)
    pick = offsets[classes] + torch.minimum((u * count).long(), (count - 1).clamp(min=0))  # (*A)
    ok = count > 0
    if by_class.numel() == 0:
        return torch.zeros_like(classes), ok
    return by_class[pick.clamp(max=by_class.numel() - 1)], ok


@dataclass
class AncoSamples:
    """The random draws of one AnCo evaluation.

    Attributes:
        classes: The present classes, in increasing order. Shape: ``(V,)``.
        query_index: Hard query pixels of each class. Shape: ``(V, Q)``.
        has_queries: Whether the class had hard pixels (otherwise it is skipped). Shape: ``(V,)``.
        negative_pool: Negative key pixels drawn for each class's queries. Shape: ``(V, P)``.
        negative_slot: The pool slots of each query's negatives, distinct per query. Shape: ``(V, Q, M)``.
    """

    classes: Tensor
    query_index: Tensor
    has_queries: Tensor
    negative_pool: Tensor
    negative_slot: Tensor

    @property
    def negative_index(self) -> Tensor:
        """Negative key pixels of each query. Shape: ``(V, Q, M)``."""
        v, q, m = self.negative_slot.shape
        return self.negative_pool.gather(1, self.negative_slot.reshape(v, q * m)).view(v, q, m)


def _prototypes(rep: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Detached class means of ``rep`` and pixel counts per class: ``(K, D)``, ``(K,)``."""
    counts = torch.bincount(labels, minlength=num_classes)  # (K,)
    sums = rep.detach().new_zeros(num_classes, rep.shape[1]).index_add_(0, labels, rep.detach())  # (K, D)
    return sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype), counts


def sample_anco(
    rep: Tensor,
    labels: Tensor,
    prob: Tensor,
    num_classes: int,
    *,
    tau: float,
    num_queries: int = 256,
    num_negatives: int = 512,
    strong_threshold: float = 0.97,
    generator: torch.Generator | None = None,
) -> AncoSamples:
    """Draw AnCo's hard queries and prototype-similarity-weighted negatives (no gradients).

    Args:
        rep: Representations of the valid pixels. Shape: ``(N, D)``.
        labels: Their (pseudo-)labels. Shape: ``(N,)``.
        prob: Predicted probability of each pixel's own label. Shape: ``(N,)``.
        num_classes: ``K``.
        tau: Temperature of the negative-class distribution (the loss's temperature).
        num_queries: ``Q`` queries per class (256 in [0]).
        num_negatives: ``M`` negatives per query (512 in [0]).
        strong_threshold: Pixels with ``prob < strong_threshold`` are hard (0.97 in [0]).
        generator: Random source.

    Returns:
        The draws; ``classes`` has fewer than 2 entries when no contrast is possible.
    """
    with torch.no_grad():
        protos, counts = _prototypes(rep, labels, num_classes)
        classes = (counts > 0).nonzero().squeeze(1)  # (V,)
        v = classes.numel()
        dev = rep.device
        if v < 2:
            empty = torch.zeros(v, num_queries, dtype=torch.long, device=dev)
            return AncoSamples(
                classes,
                empty,
                torch.zeros(v, dtype=torch.bool, device=dev),
                torch.zeros(v, NEGATIVE_POOL * num_negatives, dtype=torch.long, device=dev),
                torch.zeros(v, num_queries, num_negatives, dtype=torch.long, device=dev),
            )
        hard = prob < strong_threshold  # (N,)
        query_index, ok = sample_pixels(
            labels, hard, classes.unsqueeze(1).expand(v, num_queries), num_classes, generator
        )  # (V, Q)
        # Semantic class relation graph: negatives of class c come more often from classes like c.
        pn = F.normalize(protos[classes].float(), dim=1)  # (V, D)
        sim = pn @ pn.T / tau  # (V, V)
        sim.fill_diagonal_(float("-inf"))  # never the query's own class
        weights = torch.softmax(sim, dim=1)  # (V, V)
        pool_size = NEGATIVE_POOL * num_negatives
        drawn = torch.multinomial(weights, pool_size, replacement=True, generator=generator)  # (V, P)
        everything = torch.ones_like(labels, dtype=torch.bool)
        pool, _ = sample_pixels(labels, everything, classes[drawn], num_classes, generator)  # (V, P)
        # Each query: M consecutive slots (mod P) from a random offset, i.e. M distinct i.i.d. draws.
        offset = torch.randint(pool_size, (v, num_queries, 1), generator=generator, device=dev)
        slot = (offset + torch.arange(num_negatives, device=dev)) % pool_size  # (V, Q, M)
        return AncoSamples(classes, query_index, ok[:, 0], pool, slot)


def anco_loss_from_samples(
    rep: Tensor, labels: Tensor, samples: AncoSamples, num_classes: int, tau: float
) -> Tensor:
    """The AnCo loss on given draws (gradients flow through the queries only).

    Args:
        rep: Representations of the valid pixels. Shape: ``(N, D)``.
        labels: Their labels. Shape: ``(N,)``.
        samples: Draws from :func:`sample_anco` on the same pixels.
        num_classes: ``K``.
        tau: Temperature.

    Returns:
        Mean over contributing classes and their queries of the InfoNCE term; 0 (with a graph) when no
        class contributes.
    """
    use = samples.has_queries  # (V,)
    if samples.classes.numel() < 2 or not bool(use.any()):
        return rep.sum() * 0.0
    protos, _ = _prototypes(rep, labels, num_classes)  # (K, D), detached
    positive = F.normalize(protos[samples.classes[use]].float(), dim=1)  # (V', D)
    # Normalise only the drawn rows (the queries and the pool), not all N pixels.
    queries = F.normalize(rep[samples.query_index[use]].float(), dim=-1)  # (V', Q, D)
    pool = F.normalize(rep.detach()[samples.negative_pool[use]].float(), dim=-1)  # (V', P, D)
    l_pos = torch.einsum("vqd,vd->vq", queries, positive).unsqueeze(-1)  # (V', Q, 1)
    l_neg = torch.bmm(queries, pool.transpose(1, 2)).gather(2, samples.negative_slot[use])  # (V', Q, M)
    logits = torch.cat([l_pos, l_neg], dim=-1) / tau  # (V', Q, 1 + M)
    target = torch.zeros(logits.shape[0] * logits.shape[1], dtype=torch.long, device=rep.device)
    # Every class has Q queries, so the mean over all queries is the mean of the per-class means.
    return F.cross_entropy(logits.flatten(0, 1), target)


def anatomical_contrast_loss(
    rep: Tensor,
    labels: Tensor,
    prob: Tensor,
    num_classes: int,
    *,
    tau: float,
    num_queries: int = 256,
    num_negatives: int = 512,
    strong_threshold: float = 0.97,
    generator: torch.Generator | None = None,
) -> Tensor:
    """AnCo on flattened valid pixels: :func:`sample_anco` then :func:`anco_loss_from_samples`.

    Args:
        rep: Student representations of the valid pixels. Shape: ``(N, D)``.
        labels: Their labels (ground truth or pseudo-labels). Shape: ``(N,)``, int64.
        prob: The student's predicted probability of each pixel's own label. Shape: ``(N,)``.
        num_classes: ``K``.
        tau: Temperature (0.5 in ACTION; scheduled in ACTION++).
        num_queries: ``Q`` hard queries per class.
        num_negatives: ``M`` negatives per query.
        strong_threshold: Hard-query threshold on ``prob``.
        generator: Random source.

    Returns:
        The scalar loss.

    Raises:
        ValueError: On mismatched shapes or a non-positive temperature / count.

    Example:
        >>> rep, labels = torch.randn(500, 16, requires_grad=True), torch.randint(0, 3, (500,))
        >>> loss = anatomical_contrast_loss(rep, labels, torch.rand(500), 3, tau=0.5, num_queries=8,
        ...                                 num_negatives=16)
        >>> loss.backward()
    """
    if tau <= 0 or num_queries < 1 or num_negatives < 1:
        raise ValueError(
            f"need tau > 0, num_queries >= 1, num_negatives >= 1; got {tau}, {num_queries}, {num_negatives}."
        )
    if rep.ndim != 2 or labels.shape != (rep.shape[0],) or prob.shape != (rep.shape[0],):
        raise ValueError(
            f"expected rep (N, D), labels (N,), prob (N,); got {tuple(rep.shape)}, {tuple(labels.shape)}, "
            f"{tuple(prob.shape)}."
        )
    samples = sample_anco(
        rep,
        labels,
        prob,
        num_classes,
        tau=tau,
        num_queries=num_queries,
        num_negatives=num_negatives,
        strong_threshold=strong_threshold,
        generator=generator,
    )
    return anco_loss_from_samples(rep, labels, samples, num_classes, tau)


def flatten_valid(rep: Tensor, labels: Tensor, valid: Tensor, prob: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Pixels of dense maps as rows, keeping the valid ones: the inputs of :func:`anatomical_contrast_loss`.

    Args:
        rep: Representation maps. Shape: ``(B, D, *S)``.
        labels: Label maps. Shape: ``(B, *S)``.
        valid: Which pixels take part. Shape: ``(B, *S)``, bool.
        prob: Class probability maps. Shape: ``(B, K, *S)``.

    Returns:
        ``(rep (N, D), labels (N,), own-class prob (N,))`` for the N valid pixels.
    """
    d = rep.shape[1]
    flat_rep = rep.movedim(1, -1).reshape(-1, d)  # (B * prod(S), D)
    flat_labels = labels.reshape(-1)  # (B * prod(S),)
    own = prob.gather(1, labels.unsqueeze(1)).reshape(-1)  # (B * prod(S),)
    keep = valid.reshape(-1)
    return flat_rep[keep], flat_labels[keep], own[keep]
