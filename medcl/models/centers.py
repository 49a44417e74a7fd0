"""Uniformly distributed class centers on the unit sphere, computed offline (ACTION++ SAACL, part (a)).

ACTION++ [0] pulls each class's features towards one of ``K`` fixed unit vectors ``psi_1 .. psi_K`` in
``R^d`` that are spread as uniformly as possible, found before training by minimising the uniformity loss

    L_unif({psi_c}) = (1/K) sum_c log sum_{c'} exp(psi_c . psi_c' / tau)        (tau = 0.07)

over unit vectors (the self term included, as in the authors' code; after Li et al.'s targeted supervised
contrast [1]). For ``d >= K - 1`` its minimiser is a **regular simplex**: every pairwise cosine equals
``-1 / (K - 1)`` (antipodal points for ``K = 2``). This module builds that simplex in closed form
(deterministic, exact) and keeps the optimiser for ``d < K - 1``, where no simplex fits, or on request.

* :func:`regular_simplex` - closed form, from the Helmert basis of the hyperplane orthogonal to ``(1, .., 1)``.
* :func:`optimise_centers` - Adam on the uniformity loss with a seeded initialisation, keeping the best
  iterate (the authors' procedure: Adam, lr 1e-3, 10 000 iterations, tau 0.07).
* :func:`uniform_centers` - picks one of them, cached per setting in memory (``functools.lru_cache``) and,
  for the optimiser, optionally on disk (``cache_dir``), so a run never optimises twice.

Shape letters: K classes (centers), d embedding size.

- [0] C. You, W. Dai, Y. Min, L. Staib, J. Sekhon, J. S. Duncan, "ACTION++: Improving Semi-supervised Medical
  Image Segmentation with Adaptive Anatomical Contrast", MICCAI 2023, https://arxiv.org/abs/2304.02689
- [1] T. Li, P. Cao, Y. Yuan, L. Fan, Y. Yang, R. Feris, P. Indyk, D. Katabi, "Targeted Supervised Contrastive
  Learning for Long-Tailed Recognition", CVPR 2022, https://arxiv.org/abs/2111.13998
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

__all__ = ["optimise_centers", "regular_simplex", "uniform_centers", "uniformity_loss"]

CenterMethod = Literal["auto", "simplex", "optimize"]


def _check_sizes(num_classes: int, dim: int) -> None:
    """Raise ValueError unless ``num_classes >= 2`` and ``dim >= 1`` are integers."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"need at least 2 classes (centers); got num_classes={num_classes!r}.")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"the embedding size must be a positive integer; got dim={dim!r}.")


def regular_simplex(num_classes: int, dim: int) -> Tensor:
    """The ``K`` vertices of a regular simplex on the unit sphere of ``R^d``, in closed form.

    The centred standard basis vectors ``e_c - (1/K) 1`` of ``R^K`` form a regular simplex in the
    ``(K-1)``-dimensional hyperplane orthogonal to ``1``. Their coordinates in the Helmert basis of that
    hyperplane (rows ``h_j = (1, .., 1, -j, 0, ..) / sqrt(j (j + 1))``, ``j = 1 .. K-1``) are the columns of
    the Helmert matrix, each of norm ``sqrt(1 - 1/K)``; normalised, and padded with zeros up to ``d``, they
    have pairwise cosine exactly ``-1 / (K - 1)``. No randomness: the same ``(K, d)`` always gives the same
    tensor.

    Args:
        num_classes: ``K >= 2``.
        dim: ``d >= K - 1``.

    Returns:
        Unit rows. Shape: ``(K, d)``, float32.

    Raises:
        ValueError: When ``d < K - 1`` (no regular simplex fits; use :func:`optimise_centers`).

    Example:
        >>> c = regular_simplex(4, 3)
        >>> torch.allclose(c @ c.T, torch.full((4, 4), -1 / 3).fill_diagonal_(1.0), atol=1e-6)
        True
    """
    _check_sizes(num_classes, dim)
    k = num_classes
    if dim < k - 1:
        raise ValueError(
            f"a regular simplex of {k} points needs at least {k - 1} dimensions; got dim={dim} "
            "(use the optimiser, method='optimize')."
        )
    # Helmert rows j = 1 .. K-1 (float64 for an exact Gram matrix, cast at the end).
    helmert = torch.zeros(k - 1, k, dtype=torch.float64)
    for j in range(1, k):
        helmert[j - 1, :j] = 1.0
        helmert[j - 1, j] = -float(j)
        helmert[j - 1] /= math.sqrt(j * (j + 1))
    # (K, K-1): column c of the Helmert matrix = coordinates of e_c - 1/K; each has norm sqrt(1 - 1/K).
    points = helmert.T / math.sqrt(1.0 - 1.0 / k)
    out = torch.zeros(k, dim, dtype=torch.float64)
    out[:, : k - 1] = points
    return out.float()


def uniformity_loss(vectors: Tensor, tau: float = 0.07, *, include_self: bool = True) -> Tensor:
    """The uniformity objective of [0]/[1] on row-normalised ``vectors``.

    Args:
        vectors: Unconstrained rows; normalised here. Shape: ``(K, d)``.
        tau: Temperature (0.07 in the authors' code).
        include_self: Keep the ``c' = c`` term, as the authors do. It adds ``exp(1/tau)`` (about ``e^14``)
            to every row, so the loss is flat to float precision near the optimum; each row is a monotone
            function of the same off-diagonal sum either way, and the minimiser for ``d >= K - 1`` (the
            simplex) is the same, so the optimiser uses ``include_self=False``.

    Returns:
        ``mean_c logsumexp_c'(psi_c . psi_c' / tau)``, a scalar.
    """
    psi = torch.nn.functional.normalize(vectors, dim=1)  # (K, d)
    logits = psi @ psi.T / tau  # (K, K)
    if not include_self:
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(eye, float("-inf"))
    return torch.logsumexp(logits, dim=1).mean()


def optimise_centers(
    num_classes: int,
    dim: int,
    *,
    steps: int = 10_000,
    lr: float = 1e-3,
    tau: float = 0.07,
    seed: int = 0,
) -> Tensor:
    """``K`` unit vectors in ``R^d`` minimising :func:`uniformity_loss` with Adam (the authors' procedure).

    The ``K x d`` matrix is initialised i.i.d. N(0, 1) from a generator seeded with ``seed`` (so the result is
    deterministic on one machine), optimised without constraint on its row-normalised copy, and the
    best iterate seen is returned. For ``d >= K - 1`` it converges to a regular simplex (up to rotation).
    Deviation from the authors: the self term is left out of the optimised loss (see
    :func:`uniformity_loss`); with it, the loss cannot tell iterates apart near the optimum in float64 and
    Adam stalls (e.g. cosines off by 0.5 for K = 4, d = 3), without it the Gram matrix of the simplex is
    reached to 1e-7.

    Args:
        num_classes: ``K >= 2``.
        dim: ``d >= 1``.
        steps: Adam iterations (10 000 in the code; 1000 at lr 1e-2 suffice for small ``K``).
        lr: Adam learning rate (1e-3 in the code).
        tau: Temperature of the uniformity loss (0.07 in the code).
        seed: Seed of the initialisation.

    Returns:
        Unit rows. Shape: ``(K, d)``, float32.
    """
    _check_sizes(num_classes, dim)
    if steps < 1 or lr <= 0 or tau <= 0:
        raise ValueError(f"need steps >= 1, lr > 0 and tau > 0; got steps={steps}, lr={lr}, tau={tau}.")
    gen = torch.Generator().manual_seed(seed)
    # float64 on CPU: a few KB of parameters, and the result should not depend on the device.
    weights = torch.randn(num_classes, dim, generator=gen, dtype=torch.float64).requires_grad_(True)
    opt = torch.optim.Adam([weights], lr=lr)
    best = torch.nn.functional.normalize(weights.detach(), dim=1).clone()
    best_loss = float("inf")
    with torch.enable_grad():
        for _ in range(steps):
            loss = uniformity_loss(weights, tau, include_self=False)
            value = float(loss.detach())
            if value < best_loss:
                # The iterate that produced this loss (before the step below changes it).
                best_loss, best = value, torch.nn.functional.normalize(weights.detach(), dim=1).clone()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return best.float()


@functools.lru_cache(maxsize=32)
def _cached(num_classes: int, dim: int, method: str, steps: int, lr: float, tau: float, seed: int) -> Tensor:
    """Memoised centers; callers get a clone so the cached tensor cannot be modified."""
    if method == "simplex":
        return regular_simplex(num_classes, dim)
    return optimise_centers(num_classes, dim, steps=steps, lr=lr, tau=tau, seed=seed)


def uniform_centers(
    num_classes: int,
    dim: int,
    method: CenterMethod = "auto",
    *,
    steps: int = 10_000,
    lr: float = 1e-3,
    tau: float = 0.07,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Tensor:
    """Uniform class centers for SAACL: the closed-form simplex when it exists, else the optimiser.

    Args:
        num_classes: ``K``, background included.
        dim: ``d``, the representation size.
        method: ``"auto"`` (simplex when ``d >= K - 1``, else optimise), ``"simplex"`` or ``"optimize"``.
        steps, lr, tau, seed: Optimiser settings (see :func:`optimise_centers`); ignored by the simplex.
        cache_dir: Folder for an on-disk copy of optimised centers (``centers_K{K}_d{d}_...pt``), reused by
            later runs; ``None`` keeps them in memory only. The closed form is never written.

    Returns:
        Unit rows, a fresh tensor the caller may modify. Shape: ``(K, d)``.

    Raises:
        ValueError: On an unknown ``method``, or ``"simplex"`` with ``d < K - 1``.
    """
    _check_sizes(num_classes, dim)
    if method not in ("auto", "simplex", "optimize"):
        raise ValueError(f"method must be 'auto', 'simplex' or 'optimize'; got {method!r}.")
    if method == "auto":
        method = "simplex" if dim >= num_classes - 1 else "optimize"
    if method == "simplex" or cache_dir is None:
        return _cached(num_classes, dim, method, steps, float(lr), float(tau), seed).clone()
    path = Path(cache_dir) / f"centers_K{num_classes}_d{dim}_s{steps}_lr{lr:g}_t{tau:g}_seed{seed}.pt"
    if path.is_file():
        centers = torch.load(path, weights_only=True)
        if tuple(centers.shape) == (num_classes, dim):
            return centers
    centers = _cached(num_classes, dim, method, steps, float(lr), float(tau), seed).clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: a concurrent run never reads a half-written file.
    tmp = path.with_suffix(f".tmp{id(centers)}")
    torch.save(centers, tmp)
    tmp.replace(path)
    return centers
