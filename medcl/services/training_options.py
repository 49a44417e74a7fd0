"""The training options that are shortcuts for config keys: the flags of ``medcl train|pretrain|finetune``
and the fields of a workflow's training stages set the same keys, through this one map."""

from __future__ import annotations

from typing import Any

#: Option name (a command's flag ``dest``, a workflow stage's field) -> the config key it sets.
TRAINING_OPTIONS: dict[str, str] = {
    "data": "data.path",
    "splits": "data.splits",
    "init": "init",
    "labeled": "data.labeled",
    "steps": "train.steps",
    "seed": "train.seed",
    "runs": "output",
    "tracking_uri": "tracking.uri",
    "device": "train.device",
    "modality": "data.modality",
    "experiment": "tracking.experiment",
    "run_name": "tracking.run_name",
}


def training_overrides(**options: Any) -> dict[str, Any]:
    """``{config key: value}`` of the options given; a None value means not given and sets nothing.

    Example::

        training_overrides(steps=100, seed=None)  # {"train.steps": 100}

    Raises:
        TypeError: An option is not in :data:`TRAINING_OPTIONS`.
    """
    unknown = sorted(set(options) - set(TRAINING_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown training option(s) {', '.join(unknown)} (known: {', '.join(TRAINING_OPTIONS)})"
        )
    return {key: options[name] for name, key in TRAINING_OPTIONS.items() if options.get(name) is not None}
