"""Paths in a workflow file are relative to the file; ``--set`` paths to the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.shipped import shipped_path
from medcl.workflows import paths
from medcl.workflows.paths import absolute_if_file, override_path, rebase_paths

RUN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """``(folder of the workflow file, working directory)``, side by side; the note is printed anew."""
    monkeypatch.setattr(paths, "_noted_cwd", set())
    base, cwd = tmp_path / "wf", tmp_path / "cwd"
    (base / "data").mkdir(parents=True)
    (base / "cfg.yaml").write_text("{}\n")
    (cwd / "old_data").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    return base, cwd


def test_relative_paths_are_relative_to_the_workflow_file(layout, capsys) -> None:
    base, cwd = layout
    raw = {
        "data": "data",
        "stages": [
            {"name": "t", "config": "cfg.yaml", "splits": "later/splits.json", "init": RUN},
            {"name": "e", "model": "runs:/" + RUN, "data": "~/scans", "splits": "${stages.s.splits}"},
            {"name": "i", "input": ["data", "/abs/case.nii.gz"], "model": "models:/m@champion"},
        ],
    }
    out = rebase_paths(raw, base)
    assert out["data"] == str(base / "data")
    train, evaluate, infer = out["stages"]
    assert train["config"] == str(base / "cfg.yaml")
    assert train["splits"] == str(base / "later" / "splits.json")  # not there yet: still the file's folder
    assert train["init"] == RUN  # run ids, URIs, references, home and absolute paths are left alone
    assert (evaluate["model"], evaluate["data"], evaluate["splits"]) == (
        "runs:/" + RUN,
        "~/scans",
        "${stages.s.splits}",
    )
    assert infer["input"] == [str(base / "data"), "/abs/case.nii.gz"]
    assert infer["model"] == "models:/m@champion"
    assert capsys.readouterr().err == ""


def test_a_path_found_only_in_the_working_directory_is_taken_with_one_note(layout, capsys) -> None:
    base, cwd = layout
    out = rebase_paths({"data": "old_data", "stages": [{"name": "t", "data": "old_data"}]}, base)
    assert out["data"] == out["stages"][0]["data"] == str(cwd / "old_data")
    err = capsys.readouterr().err
    assert err.count("medcl: note: workflow path 'old_data' is taken relative to the working directory") == 1
    assert "write '../cwd/old_data'" in err  # the spelling that is relative to the file


def test_a_stage_config_may_be_a_shipped_name(layout) -> None:
    base, _ = layout
    stages = [
        {"name": "a", "config": "hippocampus/demo"},
        {"name": "b", "config": "configs/hippocampus/demo.yaml"},
    ]
    out = rebase_paths({"stages": stages}, base)
    shipped = str(shipped_path("configs", "hippocampus/demo"))
    assert [s["config"] for s in out["stages"]] == [shipped, shipped]
    out = rebase_paths({"data": "hippocampus/demo"}, base)  # only for config
    assert out["data"] == str(base / "hippocampus" / "demo")


def test_set_paths_are_relative_to_the_working_directory(layout) -> None:
    _, cwd = layout
    assert override_path("data", "d") == str(cwd / "d")
    assert override_path("stages.train.config", "c.yaml") == str(cwd / "c.yaml")
    assert override_path("stages.infer.input", ["a.nii.gz", "/b.nii.gz"]) == [
        str(cwd / "a.nii.gz"),
        "/b.nii.gz",
    ]
    assert override_path("stages.train.init", RUN) == RUN
    assert override_path("stages.train.steps", "50") == "50"
    assert override_path("stages.train.set.data.path", "x") == "x"  # a config key inside set: as given
    assert override_path("vars.folder", "old_data") == str(cwd / "old_data")  # vars: only existing paths
    assert override_path("vars.name", "nowhere") == "nowhere"


def test_init_and_model_are_made_absolute_only_when_they_are_files(layout) -> None:
    _, cwd = layout
    assert absolute_if_file("best.pt") == str(cwd / "best.pt")
    for value in (RUN, "runs:/" + RUN, "models:/m@champion", "${stages.t.checkpoint}", None):
        assert absolute_if_file(value) == value
