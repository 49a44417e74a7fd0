"""Rank the pool with one strategy (``medcl suggest``); the first ``budget`` rows are the suggestion.

* ``disagreement``, ``entropy``, ``tta``: by decreasing score (:mod:`medcl.suggest.scoring`).
* ``diverse``: the entropy, weighted by the distance of each case's pooled bottleneck embedding to the labeled
  cases and the cases picked before it (greedy k-center), so that a budget of 5 does not go to 5 copies of one
  anatomy.
* ``random``: a seeded shuffle, the baseline every strategy has to beat.

With ``group_by`` (e.g. ``patient\\d+`` for ACDC) whole groups are ranked: a group's score is the mean of its
cases' scores, its embedding the mean of theirs, and the budget counts groups. The result is a full ranking of
the pool.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from medcl.data.splits import _group_cases
from medcl.errors import ConfigError, DataError
from medcl.inference.uncertainty import greedy_diverse_order
from medcl.suggest.pool import PoolCase
from medcl.suggest.scoring import CaseScore, score_cases
from medcl.suggest.strategies import STRATEGIES, check_strategy

__all__ = ["MONTAGE_CASES", "Ranked", "SuggestResult", "rank_groups", "suggest"]

#: Tiles in the montage at most (``random`` makes thumbnails for these cases only).
MONTAGE_CASES = 8


@dataclass
class Ranked:
    """One row of the ranking: a group (or a case without ``group_by``) and its members."""

    rank: int
    case: str
    score: float | None
    suggested: bool
    cases: list[str]


@dataclass
class SuggestResult:
    """What :func:`suggest` returns: the full ranking and how it was made."""

    strategy: str
    budget: int
    rows: list[Ranked]
    model: str
    model_run: str | None
    group_by: str | None
    seconds_per_case: float
    scores: dict[str, CaseScore] = field(default_factory=dict)

    @property
    def suggested(self) -> list[Ranked]:
        """The first ``budget`` rows."""
        return [r for r in self.rows if r.suggested]

    @property
    def suggested_cases(self) -> list[str]:
        """Every case id of the suggested groups, in rank order."""
        return [c for r in self.suggested for c in r.cases]


def rank_groups(scores: dict[str, float], group_by: str | None = None) -> list[tuple[str, float, list[str]]]:
    """Groups by decreasing mean score of their cases: ``(group, score, cases)``.

    Ties are broken by the group's name, so the order never depends on the order of the pool.

    Raises:
        ConfigError: ``group_by`` is not a valid regular expression.
        DataError: A case id does not match ``group_by``.
    """
    groups = _group_cases(list(scores), group_by)
    ranked = [
        (key, float(np.mean([scores[c] for c in members])), sorted(members))
        for key, members in groups.items()
    ]
    return sorted(ranked, key=lambda row: (-row[1], row[0]))


def suggest(
    predictor: Any,
    pool: Sequence[PoolCase],
    strategy: str,
    budget: int,
    *,
    group_by: str | None = None,
    labeled: Sequence[PoolCase] = (),
    seed: int = 0,
    border: int = 3,
    networks: dict[str, nn.Module] | None = None,
    progress: bool = False,
) -> SuggestResult:
    """Rank the pool with one strategy; the first ``budget`` groups are the suggestion.

    Args:
        predictor: A loaded :class:`~medcl.inference.predictor.Predictor` (with its method for
            ``disagreement``).
        pool: The unlabeled cases.
        strategy: One of :data:`STRATEGIES`.
        budget: Groups (cases without ``group_by``) to suggest, at least 1 and at most the pool's groups.
        group_by: Regular expression grouping case ids (``patient\\d+``): groups are ranked, not cases.
        labeled: Labeled cases; ``diverse`` keeps away from their embeddings (others ignore them).
        seed: Seed of ``random``.
        border: See :func:`score_cases`.
        networks: See :func:`score_cases`.
        progress: Progress bars.

    Returns:
        The full ranking of the pool's groups with their scores.

    Raises:
        ConfigError: Unknown strategy, ``disagreement`` on a model with one network, budget below 1, bad
            ``group_by``.
        DataError: Empty pool, budget above the pool's groups, a case id that does not match ``group_by``, a
            case that cannot be read.
    """
    if networks is None:
        check_strategy(strategy, predictor.method, predictor.source)
    elif strategy not in STRATEGIES:
        check_strategy(strategy, None)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"--budget must be a whole number of at least 1; got {budget!r}")
    if not pool:
        raise DataError("the pool of unlabeled cases is empty: there is nothing to suggest")
    ids = [c.id for c in pool]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"the pool names a case twice: {', '.join(dup[:5])}")
    groups = _group_cases(ids, group_by)
    unit = "group(s)" if group_by else "case(s)"
    if budget > len(groups):
        raise DataError(
            f"--budget {budget} is larger than the pool: {len(groups)} unlabeled {unit}"
            + (f" ({len(ids)} cases, group_by {group_by!r})" if group_by else "")
            + f"; ask for at most {len(groups)}"
        )
    start = time.perf_counter()
    scores: dict[str, CaseScore] = {}
    rows: list[tuple[str, float | None]]
    if strategy == "random":
        keys = sorted(groups)
        random.Random(seed).shuffle(keys)
        rows = [(key, None) for key in keys]
        # Thumbnails (entropy overlays) only for the montage's cases.
        chosen = [c for key in keys[: min(budget, MONTAGE_CASES)] for c in pool if c.id in groups[key]]
        scored: list[CaseScore] = []
    else:
        scored = score_cases(
            predictor, pool, strategy, networks=networks, border=border, progress=progress, desc=strategy
        )
        scores = {s.case: s for s in scored}
        ranking = rank_groups({s.case: s.score for s in scored}, group_by)
        group_score = {key: score for key, score, _ in ranking}
        if strategy == "diverse":
            keys = list(groups)
            emb = np.stack([np.mean([scores[c].embedding for c in groups[key]], axis=0) for key in keys])
            lab = None
            if labeled:
                lab_scores = score_cases(
                    predictor, labeled, "diverse", border=border, progress=progress, desc="labeled"
                )
                lab = np.stack([s.embedding for s in lab_scores])
            order = greedy_diverse_order(np.array([group_score[k] for k in keys]), emb, lab)
            rows = [(keys[i], gain) for i, gain in order]
        else:
            rows = [(key, score) for key, score, _ in ranking]
    seconds = time.perf_counter() - start
    if strategy == "random":
        thumbs = score_cases(predictor, chosen, "entropy", border=border) if chosen else []
        scores = {s.case: CaseScore(s.case, None, None, s.thumbnail) for s in thumbs}
    ranked = [
        Ranked(rank=i + 1, case=key, score=score, suggested=i < budget, cases=sorted(groups[key]))
        for i, (key, score) in enumerate(rows)
    ]
    return SuggestResult(
        strategy=strategy,
        budget=budget,
        rows=ranked,
        model=str(predictor.source),
        model_run=predictor.model_run_id,
        group_by=group_by,
        seconds_per_case=seconds / len(pool),
        scores=scores,
    )
