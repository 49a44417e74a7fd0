"""Issue 14's CLI habits: one name for the runs folder, short flags, shipped configs and workflows, fast help."""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from medcl.cli import build_parser, main
from medcl.commands import flags
from medcl.config_files import read_yaml
from medcl.services.configs import load_config
from medcl.shipped import shipped_dir, shipped_names

REPO = Path(__file__).resolve().parents[1]


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


def test_pretrain_help_names_a_pretraining_config_and_its_default_cases(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "pretrain_global.yaml" in text and "supervised.yaml" not in text
    assert "80/20" not in text and "every training image of the dataset" in text


def test_config_list_show_init(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["config", "list"]) == 0
    out = capsys.readouterr().out
    assert "hippocampus/supervised" in out and "la2018/mcsc" in out and "demo " in out
    demo = REPO / "configs" / "hippocampus" / "demo.yaml"
    assert main(["config", "show", "hippocampus/demo"]) == 0  # resolved: its 'extends' chain merged
    out = capsys.readouterr().out
    assert out.startswith(
        "# hippocampus/demo: resolved config = hippocampus/demo merged over hippocampus/supervised"
    )
    assert yaml.safe_load(out) == read_yaml(demo) and "extends" not in yaml.safe_load(out)
    assert main(["config", "show", "hippocampus/demo", "--raw"]) == 0
    assert capsys.readouterr().out == demo.read_text()
    assert main(["config", "show", "hippocampus/supervised"]) == 0  # extends nothing: the file, comments kept
    out = capsys.readouterr().out
    assert "resolved config (it extends no other config" in out and out.endswith(
        (REPO / "configs" / "hippocampus" / "supervised.yaml").read_text()
    )
    assert main(["config", "init", "configs/hippocampus/demo.yaml", "-o", "my.yaml"]) == 0
    copied = (tmp_path / "my.yaml").read_text()  # its relative 'extends' became the shipped name
    assert copied == demo.read_text().replace("extends: supervised.yaml", "extends: hippocampus/supervised")
    assert load_config(tmp_path / "my.yaml") == load_config(demo)
    assert main(["config", "init", "hippocampus/demo", "-o", "my.yaml"]) == 1  # no silent overwrite
    assert "--force" in capsys.readouterr().err
    assert main(["config", "show", "hippocampus/nope"]) == 1
    assert "hippocampus/supervised" in capsys.readouterr().err  # names the shipped configs
    # A copied workflow still reaches the shipped configs, by name.
    assert main(["config", "init", "demo", "--workflow", "-o", "wf/demo.yaml"]) == 0
    assert "config: hippocampus/demo\n" in (tmp_path / "wf" / "demo.yaml").read_text()
    capsys.readouterr()
    assert (
        main(["run", "wf/demo.yaml", "--check", "--set", f"data={REPO / 'demo/Task04_Hippocampus_sample'}"])
        == 0
    )
    assert str((shipped_dir("configs") / "hippocampus" / "demo.yaml").resolve()) in capsys.readouterr().out


def test_package_data_ships_every_config_and_workflow() -> None:
    """pyproject's package-data globs cover every YAML of configs/ and workflows/ (what a wheel holds)."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "medcl"
    ]
    files = [f"_shipped/configs/{n}.yaml" for n in shipped_names("configs")]
    files += [f"_shipped/workflows/{n}.yaml" for n in shipped_names("workflows")]
    assert len(files) == len(list((REPO / "configs").rglob("*.yaml"))) + len(
        list((REPO / "workflows").glob("*.yaml"))
    )
    missed = [
        f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)
    ]
    assert not missed


def test_workflow_paths_are_relative_to_the_file_and_check_fails_without_data(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)  # not the repository: the shipped workflow must still find its configs
    assert main(["run", "demo", "--check"]) == 0  # shipped by name; ../demo/ is relative to the file
    out = capsys.readouterr().out
    assert str(REPO / "configs" / "hippocampus" / "demo.yaml") in out and str(tmp_path / "demo_runs") in out
    assert main(["run", str(REPO / "workflows" / "demo.yaml"), "--check", "--set", "data=missing"]) == 1
    err = capsys.readouterr().err
    assert f"data folder {tmp_path / 'missing'} does not exist" in err  # --set paths: the working folder


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
    doc = (REPO / "docs" / "cli.md").read_text(encoding="utf-8") + (REPO / "docs" / "workflows.md").read_text(encoding="utf-8")  # run: there
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
