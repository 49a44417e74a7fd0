"""``medcl run --check``: a workflow validated and described without running anything."""

from __future__ import annotations

from pathlib import Path

from medcl.cli import main

REPO = Path(__file__).resolve().parents[2]


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


def test_check_describes_every_stage_and_names_each_missing_folder(
    hippocampus: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wf.yaml").write_text(
        f"name: mine\ndata: {hippocampus}\n"
        "stages:\n"
        "  - {name: split, kind: split, labeled: 2, val: 1}\n"
        "  - {name: train, kind: train, config: later.yaml, splits: '${stages.split.splits}'}\n"
        "  - {name: score, kind: evaluate, data: elsewhere, model: '${stages.train.checkpoint}',\n"
        "     splits: '${stages.split.splits}', subset: val}\n"
        "register: {name: mine-model, from: train}\n"
    )
    assert main(["run", "wf.yaml", "--check", "--runs", "2024"]) == 1  # 'elsewhere' does not exist
    out, err = capsys.readouterr()
    lines = out.splitlines()
    # --runs 2024 is a folder named 2024 (a typed flag value), not the number 2024.
    assert lines[0] == f"workflow mine: 3 stage(s), experiment 'workflow-mine', output {tmp_path / '2024'}"
    assert lines[2].split() == ["train", "train", str(tmp_path / "later.yaml"), "(missing:", "needed", "when",
                                "the", "stage", "runs)"]  # fmt: skip
    assert lines[3].split() == ["score", "evaluate", "model", "${stages.train.checkpoint}"]
    assert lines[4] == "  register train as models:/mine-model@champion"
    assert lines[5] == f"  state: {tmp_path / '2024' / 'workflows' / 'mine' / 'state.json'}"
    assert err == (
        f"medcl: error: workflow wf.yaml: stages.score.data folder {tmp_path / 'elsewhere'} does not exist "
        "(--set stages.score.data=DIR)\n"
    )
    (tmp_path / "elsewhere").mkdir()
    assert main(["run", "wf.yaml", "--check"]) == 0  # a missing stage config is only reported
    assert not (tmp_path / "medcl_runs").exists()  # --check runs nothing, creates nothing
