"""Flags with one name across commands, and old spellings that keep working with a deprecation note.

One rule for every command: ``--runs DIR`` is the runs folder (run folders, the MLflow store
``DIR/mlflow.db`` and its artifacts; default ``medcl_runs``: ``medcl.defaults.DEFAULT_RUNS``), and
``-o/--output`` is what the command itself produces (``infer``'s masks, ``data split``'s splits file).
``--output DIR`` used to mean the runs folder in ``train``, ``pretrain``, ``finetune``, ``evaluate``, ``run``
and ``ui``; there it is still accepted, with a note printed once per process.
"""

from __future__ import annotations

import argparse
import sys

_noted: set[str] = set()


class DeprecatedAlias(argparse.Action):
    """Store the value under the new flag's ``dest`` and print one note naming the new spelling."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if option_string not in _noted:
            _noted.add(option_string)
            print(
                f"medcl: note: {option_string} is deprecated here, use {self.new} (same meaning)",
                file=sys.stderr,
            )
        setattr(namespace, self.dest, values)


def add_runs_flag(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str, default=None) -> None:
    """``--runs DIR`` (dest ``runs``), with the old ``--output DIR`` as a deprecated alias."""
    p.add_argument("--runs", metavar="DIR", default=default, help=help)
    p.add_argument(
        "--output", dest="runs", metavar="DIR", action=DeprecatedAlias, new="--runs", help=argparse.SUPPRESS
    )


def add_compute_flags(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, *, batch_size: bool = True
) -> None:
    """``--device``, ``--precision`` and (optionally) ``--batch-size`` of every command that runs a model."""
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the model runs (default auto: CUDA if present); use cpu when the GPU is busy",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="network arithmetic: auto = bf16 on CPUs/GPUs with native bf16, fp16 on older GPUs, else fp32",
    )
    if batch_size:
        p.add_argument(
            "--batch-size",
            type=int,
            default=None,
            metavar="N",
            help="sliding windows per forward pass (default: the model's val.sw_batch_size); lower it on OOM",
        )
