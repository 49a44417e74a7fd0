"""Flags with one name across commands: ``--runs`` (``--output`` its deprecated spelling), compute flags."""

from __future__ import annotations

import argparse

import pytest

from medcl.cli import build_parser
from medcl.commands import flags
from medcl.defaults import DEFAULT_RUNS


def test_runs_flag_everywhere_and_old_output_still_works_with_one_note(monkeypatch, capsys) -> None:
    monkeypatch.setattr(flags, "_noted", set())
    parser = build_parser()
    for argv in (
        ["train", "cfg.yaml", "--runs", "R"],
        ["pretrain", "cfg.yaml", "--runs", "R"],
        ["finetune", "cfg.yaml", "--runs", "R"],
        ["evaluate", "--model", "m", "--runs", "R"],
        ["ui", "--runs", "R"],
        ["run", "wf.yaml", "--runs", "R"],
        ["infer", "--model", "m", "-i", "a.nii.gz", "-o", "masks", "--runs", "R"],
    ):
        assert parser.parse_args(argv).runs == "R", argv
    assert capsys.readouterr().err == ""
    for command in (["train", "cfg.yaml"], ["evaluate", "--model", "m"], ["ui"], ["run", "wf.yaml"]):
        assert parser.parse_args([*command, "--output", "OLD"]).runs == "OLD"
    err = capsys.readouterr().err
    assert err.count("--output is deprecated here, use --runs") == 1, err  # once per process
    args = parser.parse_args(["infer", "--model", "m", "-i", "a.nii.gz", "b.nii.gz", "-o", "masks"])
    assert args.input == ["a.nii.gz", "b.nii.gz"] and args.output == "masks" and args.runs is None


def test_the_old_spelling_is_hidden_and_the_new_one_wins_when_last(monkeypatch, capsys) -> None:
    monkeypatch.setattr(flags, "_noted", set())
    parser = argparse.ArgumentParser()
    flags.add_runs_flag(parser, "runs folder", default=DEFAULT_RUNS)
    assert parser.parse_args([]).runs == "medcl_runs"
    assert parser.parse_args(["--output", "old", "--runs", "new"]).runs == "new"  # one dest: the last wins
    assert parser.parse_args(["--runs", "new", "--output", "old"]).runs == "old"
    assert capsys.readouterr().err == "medcl: note: --output is deprecated here, use --runs (same meaning)\n"
    help_text = parser.format_help()
    assert "--runs DIR" in help_text and "--output" not in help_text


def test_compute_flags_defaults_and_choices(capsys) -> None:
    parser = argparse.ArgumentParser()
    flags.add_compute_flags(parser)
    args = parser.parse_args([])
    assert (args.device, args.precision, args.batch_size) == ("auto", "auto", None)
    args = parser.parse_args(["--device", "cpu", "--precision", "bf16", "--batch-size", "8"])
    assert (args.device, args.precision, args.batch_size) == ("cpu", "bf16", 8)
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err
    without = argparse.ArgumentParser()
    flags.add_compute_flags(without, batch_size=False)
    assert not hasattr(without.parse_args([]), "batch_size")
