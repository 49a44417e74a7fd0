"""Issue 14's CLI habits: fast help, and help texts and docs that match the implementations.

The runs flag, `medcl config` and `medcl run --check` are tested beside their commands, in tests/commands/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from medcl.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_pretrain_help_names_a_pretraining_config_and_its_default_cases(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "pretrain_global.yaml" in text and "supervised.yaml" not in text
    assert "80/20" not in text and "every training image of the dataset" in text


def test_help_imports_no_torch_pydantic_or_numpy() -> None:
    """Building every parser of these commands is instant: heavy imports wait until a command runs."""
    code = (
        "import argparse, sys\n"
        "from medcl.commands import config, data, evaluate, export, infer, run, suggest, train, ui\n"
        "sub = argparse.ArgumentParser().add_subparsers()\n"
        "[m.add_parser(sub) for m in (config, data, evaluate, export, infer, run, suggest, train, ui)]\n"
        "from medcl.cli import build_parser\n"
        "build_parser()  # `medcl --help`: every subcommand, as the console script builds them\n"
        "print(sorted(m for m in ('torch', 'monai', 'mlflow', 'pydantic', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_torch_free_choice_lists_match_their_implementations() -> None:
    """The choices `--help` lists without importing torch are the ones the implementations accept."""
    from medcl.commands.export import FORMATS
    from medcl.inference import export
    from medcl.suggest import STRATEGIES
    from medcl.suggest.strategies import STRATEGIES as HELP_STRATEGIES

    assert FORMATS == tuple(export.FORMATS)
    assert HELP_STRATEGIES == STRATEGIES
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    strategy = next(a for a in sub.choices["suggest"]._actions if a.dest == "strategy")
    assert tuple(strategy.choices) == STRATEGIES


@pytest.mark.parametrize("command", ["pretrain", "evaluate", "run", "ui", "config"])
def test_every_flag_of_the_command_is_in_docs_cli(command: str) -> None:
    """docs/cli.md (workflows.md for run) names every flag the command's --help shows (the help is the source, the page follows)."""
    doc = (REPO / "docs" / "cli.md").read_text(encoding="utf-8") + (REPO / "docs" / "workflows.md").read_text(
        encoding="utf-8"
    )  # run: there
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parsers = [sub.choices[command]]
    missing = []
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.help != argparse.SUPPRESS:
                skip = (
                    "--help",
                    "--images",
                    "--modality",
                    "--unlabeled",
                )  # the last three: unlabeled-folder work
                missing += [
                    o for o in action.option_strings if o.startswith("--") and o not in skip and o not in doc
                ]
    assert not missing, f"document {missing} of `medcl {command}` in docs/cli.md"
