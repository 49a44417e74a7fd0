"""Flags shared by the training commands and the config they build: typed values, ``--set``, image folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from medcl.cli import build_parser
from medcl.commands.common import add_training_flags, config_from_args

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "configs" / "hippocampus" / "pretrain_global.yaml"
SUPERVISED = REPO / "configs" / "hippocampus" / "supervised.yaml"


def test_flag_values_are_typed_not_reread_as_yaml(tmp_path) -> None:
    """A flag's value reaches the config as given: a numeric folder name, 'yes' and 'a: b' stay strings."""
    parser = argparse.ArgumentParser()
    add_training_flags(parser)
    for folder in ("2024", "yes", str(tmp_path / "a: b")):
        args = parser.parse_args(
            ["hippocampus/supervised", "--runs", folder, "--data", folder, "--steps", "7"]
        )
        cfg = config_from_args(args)
        assert (cfg.output, cfg.data.path, cfg.train.steps) == (folder, folder, 7)
    # --set still reads YAML, and the typed flags win over it
    args = parser.parse_args(["hippocampus/supervised", "--set", "train.steps=9", "--set", "optim.lr=1e-3"])
    assert (config_from_args(args).train.steps, config_from_args(args).optim.lr) == (9, 1e-3)
    args = parser.parse_args(["hippocampus/supervised", "--set", "train.steps=9", "--steps", "5"])
    assert config_from_args(args).train.steps == 5


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args([str(a) for a in argv])


def test_flags_become_config_keys(tmp_path: Path) -> None:
    odd = tmp_path / "scans, 2024: site A"  # a comma, a colon and spaces stay one path
    cfg = config_from_args(parse("pretrain", PRETRAIN, "--images", odd, "--images", "b", "--modality", "ct"))
    assert cfg.data.images == [str(odd), "b"] and cfg.data.modality == "ct"
    cfg = config_from_args(parse("train", SUPERVISED, "--data", "d", "--unlabeled", odd))
    assert cfg.data.unlabeled_dir == str(odd)
    cfg = config_from_args(parse("train", SUPERVISED, "--data", "d", "--unlabeled", "x", "--unlabeled", "y"))
    assert cfg.data.unlabeled_dir == ["x", "y"]
