"""Score each case of the pool with one strategy (``medcl suggest``): one prediction per case, no mask.

Each case is predicted once with the model's own preprocessing and sliding window
(:class:`~medcl.inference.predictor.Predictor`) and scored on the network's grid; the maths and references of
each score are in :mod:`medcl.inference.uncertainty`:

* ``disagreement``: 1 - Dice between the two networks a method trains (MCSC's CNN and Transformer; a student
  and its EMA teacher). Free: no extra passes beyond the second network's.
* ``entropy``: mean normalised entropy of the softmax over the predicted foreground and its border.
* ``tta``: mean variance of the softmax over flips and quarter turns (4 + 2 passes for 2D models, 8 + 2 for 3D).
* ``diverse``: the entropy, plus each case's pooled bottleneck embedding (the ranking spreads the picks).

Every score comes with a thumbnail (the slice with the most uncertainty) for the montage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medcl.errors import ConfigError, DataError, MedclError
from medcl.inference.uncertainty import (
    dice_agreement,
    disagreement_map,
    foreground_region,
    normalized_entropy,
    region_mean,
)
from medcl.suggest.pool import PoolCase
from medcl.suggest.strategies import STRATEGIES, paired_networks

__all__ = ["CaseScore", "score_cases"]


@dataclass
class CaseScore:
    """One case's score, its pooled embedding (``diverse``) and a thumbnail for the montage.

    Attributes:
        case: Case id.
        score: Higher = more worth labelling; ``None`` for ``random``.
        embedding: Pooled bottleneck features, shape ``(D,)`` (``diverse`` only).
        thumbnail: ``(image slice, uncertainty slice)`` of the slice with the most uncertainty, float32 2D.
    """

    case: str
    score: float | None
    embedding: np.ndarray | None = None
    thumbnail: tuple[np.ndarray, np.ndarray] | None = None


class _EmbeddingTap:
    """Wraps a :class:`SegNet` for the sliding window: returns its logits, sums its pooled bottleneck."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.total: torch.Tensor | None = None
        self.count = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x, return_features=True)
        pooled = out.embedding.float().flatten(2).mean(2)  # (B, C_e): one vector per window
        self.total = pooled.sum(0) if self.total is None else self.total + pooled.sum(0)
        self.count += pooled.shape[0]
        return out.logits

    def embedding(self) -> np.ndarray:
        if self.total is None:
            raise MedclError("no window reached the network; cannot pool an embedding")
        return (self.total / self.count).cpu().numpy()


def _thumbnail(image: torch.Tensor, vmap: torch.Tensor, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``axis`` slice with the most uncertainty: ``(image channel 0, map)``, each 2D float32."""
    sums = vmap.float().sum(dim=[d for d in range(3) if d != axis])  # (n_slices,)
    index = int(sums.argmax()) if float(sums.max()) > 0 else vmap.shape[axis] // 2
    img = torch.as_tensor(image)[0].float().select(axis, index)
    return img.cpu().numpy().astype(np.float32), vmap.float().select(axis, index).cpu().numpy().astype(
        np.float32
    )


def _prepare(net: nn.Module, predictor: Any) -> nn.Module:
    """A network of the method on the predictor's device and arithmetic, in eval mode."""
    from medcl.precision import set_compute_dtype

    net = net.to(predictor.device).eval()
    set_compute_dtype(net, predictor.precision.dtype)
    return net


def score_cases(
    predictor: Any,
    cases: Sequence[PoolCase],
    strategy: str,
    *,
    networks: dict[str, nn.Module] | None = None,
    border: int = 3,
    progress: bool = False,
    desc: str = "score",
) -> list[CaseScore]:
    """Score each case with one strategy (``random`` scores nothing: see :func:`suggest`).

    Args:
        predictor: A loaded :class:`~medcl.inference.predictor.Predictor`.
        cases: The cases.
        strategy: ``disagreement``, ``entropy``, ``tta`` or ``diverse`` (entropy + embedding).
        networks: For ``disagreement``: the two networks (default :func:`paired_networks` of the predictor's
            method). Any callable mapping ``(B, C, *S)`` to ``(B, K, *S)`` logits works, which is how the tests
            hand-build networks.
        border: Voxels around the predicted foreground that the entropy and TTA scores also average over.
        progress: A progress bar over cases.
        desc: Its label.

    Returns:
        One :class:`CaseScore` per case, in order.

    Raises:
        DataError: A case cannot be read or preprocessed (names the file).
    """
    from medcl.models.segnet import SegNet

    axis = predictor.cfg.data.slice_axis if predictor.spec.spatial_dims == 2 else 2
    k = predictor.spec.num_classes
    pair: list[nn.Module] = []
    if strategy == "disagreement":
        nets = networks if networks is not None else paired_networks(predictor.method)
        if len(nets) != 2:
            raise ConfigError(f"disagreement needs exactly two networks; got {len(nets)}")
        pair = [_prepare(n, predictor) if isinstance(n, nn.Module) else n for n in nets.values()]
    views = predictor.tta_views(rotations=True) if strategy == "tta" else None
    out = []
    for case in tqdm(cases, desc=desc, disable=not progress, dynamic_ncols=True):
        try:
            _, image = predictor.preprocess_case(case.paths)
            embedding = None
            if strategy == "disagreement":
                pa, _ = predictor.probability_stats(image, net=pair[0])
                pb, _ = predictor.probability_stats(image, net=pair[1])
                score = 1.0 - dice_agreement(pa.argmax(0), pb.argmax(0), k)
                vmap = disagreement_map(pa, pb)
            elif strategy == "tta":
                mean, var = predictor.probability_stats(image, views, variance=True)
                vmap = var.mean(0)
                score = region_mean(vmap, foreground_region(mean.argmax(0), border))
            elif strategy in ("entropy", "diverse"):
                tap = None
                if strategy == "diverse":
                    if not isinstance(predictor.net, SegNet):
                        raise ConfigError(
                            "the diverse strategy needs a medcl network (its bottleneck features)"
                        )
                    tap = _EmbeddingTap(predictor.net)
                mean, _ = predictor.probability_stats(image, net=tap)
                vmap = normalized_entropy(mean, dim=0)
                score = region_mean(vmap, foreground_region(mean.argmax(0), border))
                embedding = tap.embedding() if tap is not None else None
            else:
                raise ConfigError(
                    f"score_cases: unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
                )
        except (RuntimeError, ValueError) as exc:  # the network or sliding window on this case
            raise DataError(f"{case.id} ({case.paths[0]}): scoring failed: {exc}") from exc
        out.append(CaseScore(case.id, float(score), embedding, _thumbnail(image, vmap, axis)))
    return out
