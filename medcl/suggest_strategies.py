"""The names of ``medcl suggest``'s ranking strategies, without importing torch.

``medcl --help`` builds every subcommand's parser, and ``suggest --strategy`` lists these as its choices;
:mod:`medcl.suggest` (which needs torch) implements them. Keeping the names here lets help and argument
errors answer without loading torch, MONAI or numpy.
"""

from __future__ import annotations

from typing import Literal, get_args

Strategy = Literal["disagreement", "entropy", "tta", "diverse", "random"]
#: Allowed values of ``--strategy``.
STRATEGIES: tuple[str, ...] = get_args(Strategy)

__all__ = ["STRATEGIES", "Strategy"]
