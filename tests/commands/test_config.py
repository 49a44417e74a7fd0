"""``medcl config list|show|init``: the shipped configs and workflows, resolved or as written, and copies."""

from __future__ import annotations

from pathlib import Path

import yaml

from medcl.cli import main
from medcl.config_files import read_yaml
from medcl.services.configs import load_config
from medcl.shipped import shipped_dir, shipped_names

REPO = Path(__file__).resolve().parents[2]


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


def test_list_names_every_shipped_file_with_its_first_comment(capsys) -> None:
    assert main(["config", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "configs (medcl train NAME --data DIR):"
    workflows = lines.index("workflows (medcl run NAME):")
    listed = [line.split()[0] for line in lines[1:workflows]]
    assert listed == shipped_names("configs")
    assert [line.split()[0] for line in lines[workflows + 1 :]] == shipped_names("workflows")
    # The first comment of hippocampus/supervised.yaml has 82 characters: cut to 75, with "...".
    first = (REPO / "configs" / "hippocampus" / "supervised.yaml").read_text().splitlines()[0].lstrip("# ")
    assert len(first) == 82
    row = next(line for line in lines if line.split()[0] == "hippocampus/supervised")
    assert row == f"  {'hippocampus/supervised':<28} {first[:75].rstrip()}..."
    assert all(len(line.split(None, 1)[1]) <= 78 for line in lines if line.startswith("  "))


def test_show_a_workflow_and_init_a_config_from_a_subfolder(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["config", "show", "demo", "--workflow"]) == 0
    assert capsys.readouterr().out == (REPO / "workflows" / "demo.yaml").read_text()
    # hippocampus/cpu/supervised says `extends: ../supervised.yaml`; the copy names the parent instead.
    assert main(["config", "init", "hippocampus/cpu/supervised", "-o", "deep/cpu.yaml"]) == 0
    assert capsys.readouterr().out.startswith("wrote deep/cpu.yaml (from hippocampus/cpu/supervised)")
    copied = (tmp_path / "deep" / "cpu.yaml").read_text()
    assert "extends: hippocampus/supervised\n" in copied and "../supervised.yaml" not in copied
    shipped = shipped_dir("configs") / "hippocampus" / "cpu" / "supervised.yaml"
    assert load_config(tmp_path / "deep" / "cpu.yaml") == load_config(shipped)
    # --force replaces a file of one's own.
    assert main(["config", "init", "hippocampus/demo", "-o", "deep/cpu.yaml", "--force"]) == 0
    assert "extends: hippocampus/supervised" in (tmp_path / "deep" / "cpu.yaml").read_text()
    assert read_yaml(tmp_path / "deep" / "cpu.yaml") == read_yaml(
        shipped_dir("configs") / "hippocampus/demo.yaml"
    )
    # init takes shipped names only, not a file of one's own.
    assert main(["config", "init", "deep/cpu.yaml", "-o", "again.yaml"]) == 1
    assert "no shipped config named 'deep/cpu.yaml'" in capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "deep" / "cpu.yaml").read_text())["extends"] == "hippocampus/supervised"
