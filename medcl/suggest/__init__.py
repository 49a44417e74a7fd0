"""Which cases to label next: score the unlabeled pool with a trained model and rank it (``medcl suggest``).

The pool is the ``unlabeled`` subset of a splits file (or every image of a folder). Each case is predicted
once with the model's own preprocessing and sliding window (:class:`~medcl.inference.predictor.Predictor`)
and scored on the network's grid; no mask is written. Strategies (maths and references in
:mod:`medcl.inference.uncertainty`):

* ``disagreement``: 1 - Dice between the two networks a method trains (MCSC's CNN and Transformer; a student
  and its EMA teacher). Free: no extra passes beyond the second network's.
* ``entropy``: mean normalised entropy of the softmax over the predicted foreground and its border.
* ``tta``: mean variance of the softmax over flips and quarter turns (4 + 2 passes for 2D models, 8 + 2 for 3D).
* ``diverse``: the entropy, weighted by the distance of each case's pooled bottleneck embedding to the labeled
  cases and the cases picked before it (greedy k-center), so that a budget of 5 does not go to 5 copies of one
  anatomy.
* ``random``: a seeded shuffle, the baseline every strategy has to beat.

With ``group_by`` (e.g. ``patient\\d+`` for ACDC) whole groups are ranked: a group's score is the mean of its
cases' scores, its embedding the mean of theirs, and the budget counts groups. The result is a full ranking of
the pool; the first ``budget`` rows are the suggestion.

The package, one concern per module: :mod:`~medcl.suggest.strategies` (the strategy names and which model
supports which; no torch), :mod:`~medcl.suggest.pool` (the cases to rank), :mod:`~medcl.suggest.scoring`
(one score per case), :mod:`~medcl.suggest.ranking` (:func:`suggest`), :mod:`~medcl.suggest.output` (CSV,
splits, montage) and :mod:`~medcl.suggest.tracking` (the MLflow run). Everything is importable from here;
only the strategy names are loaded with the package, the rest on first use, so that ``medcl --help`` and
``import medcl.suggest.strategies`` never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medcl.suggest.strategies import (
    STRATEGIES,
    Strategy,
    check_strategy,
    paired_networks,
    supported_strategies,
)

if TYPE_CHECKING:
    from medcl.suggest.output import CSV_COLUMNS, montage, updated_splits, write_csv
    from medcl.suggest.pool import PoolCase, load_pool
    from medcl.suggest.ranking import MONTAGE_CASES, Ranked, SuggestResult, rank_groups, suggest
    from medcl.suggest.scoring import CaseScore, score_cases
    from medcl.suggest.tracking import log_to_mlflow, model_run_of

# Public name -> the module defining it, imported on first access (these modules import torch).
_LAZY = {
    "CSV_COLUMNS": "output",
    "montage": "output",
    "updated_splits": "output",
    "write_csv": "output",
    "PoolCase": "pool",
    "load_pool": "pool",
    "MONTAGE_CASES": "ranking",
    "Ranked": "ranking",
    "SuggestResult": "ranking",
    "rank_groups": "ranking",
    "suggest": "ranking",
    "CaseScore": "scoring",
    "score_cases": "scoring",
    "log_to_mlflow": "tracking",
    "model_run_of": "tracking",
}

__all__ = [
    "CSV_COLUMNS",
    "MONTAGE_CASES",
    "STRATEGIES",
    "CaseScore",
    "PoolCase",
    "Ranked",
    "Strategy",
    "SuggestResult",
    "check_strategy",
    "load_pool",
    "log_to_mlflow",
    "model_run_of",
    "montage",
    "paired_networks",
    "rank_groups",
    "score_cases",
    "suggest",
    "supported_strategies",
    "updated_splits",
    "write_csv",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first access (PEP 562) and keep the value here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazily imported ones included."""
    return sorted({*globals(), *_LAZY})
