"""The ranking strategies of ``medcl suggest`` and which trained model supports which; no torch import.

``medcl --help`` builds every subcommand's parser, and ``suggest --strategy`` lists :data:`STRATEGIES` as its
choices; keeping the names (and the checks below, which import the network classes only when called) here lets
help and argument errors answer without loading torch, MONAI or numpy. :mod:`medcl.suggest.scoring`
implements the strategies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

from medcl.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

Strategy = Literal["disagreement", "entropy", "tta", "diverse", "random"]
#: Allowed values of ``--strategy``.
STRATEGIES: tuple[str, ...] = get_args(Strategy)

__all__ = ["STRATEGIES", "Strategy", "check_strategy", "paired_networks", "supported_strategies"]


def paired_networks(method: nn.Module | None) -> dict[str, nn.Module]:
    """The two networks of a method that trains two, by name; empty when it trains one.

    MCSC (and any method validating several networks) gives its first two validation networks (``cnn``,
    ``transformer``); a student-teacher method (``ema_pairs``, e.g. ``actionpp``) gives ``student`` and
    ``teacher`` when both are segmentation networks.
    """
    if method is None:
        return {}
    from medcl.models.segnet import SegNet

    nets = dict(method.validation_networks()) if hasattr(method, "validation_networks") else {}
    if len(nets) >= 2:
        names = list(nets)[:2]
        return {n: nets[n] for n in names}
    pairs = getattr(method, "ema_pairs", None)
    if callable(pairs):
        for teacher, student in pairs():
            if isinstance(teacher, SegNet) and isinstance(student, SegNet):
                return {"student": student, "teacher": teacher}
    return {}


def supported_strategies(method: nn.Module | None) -> list[str]:
    """The strategies a trained method supports: all but ``disagreement`` unless it has two networks."""
    return [s for s in STRATEGIES if s != "disagreement" or paired_networks(method)]


def check_strategy(strategy: str, method: nn.Module | None, model: str = "the model") -> None:
    """Raise a one-sentence error for an unknown strategy, or ``disagreement`` on a one-network model.

    Raises:
        ConfigError: Naming the strategies the model supports.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "disagreement" and not paired_networks(method):
        name = getattr(method, "name", None) or type(method).__name__
        raise ConfigError(
            f"--strategy disagreement needs two networks trained together (MCSC's CNN and Transformer, or a "
            f"student and its EMA teacher), but {model} (method {name}) has one; strategies this model supports: "
            f"{', '.join(supported_strategies(method))}"
        )
