"""Workflow files: schema, ``--set`` and variables, without training (references: test_references.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.errors import ConfigError
from medcl.workflows.spec import build_workflow, load_workflow

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "workflows").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_workflows_validate_without_their_configs(path: Path) -> None:
    wf = load_workflow(path)
    assert wf.name == path.stem
    assert wf.stages and wf.register_ is not None


@pytest.mark.parametrize("path", sorted((ROOT / "workflows").glob("*.yaml")), ids=lambda p: p.name)
def test_a_pretraining_that_reads_labels_sees_only_the_labeled_cases_of_the_training_it_feeds(
    path: Path,
) -> None:
    """ACTION++ stages 1-2 train a supervised loss: with every labeled case of the splits there, a workflow's
    stage 3 on N labeled patients would start from weights that saw the others' labels."""
    from medcl.config_files import read_yaml

    wf = load_workflow(path)
    for stage in wf.stages:
        if stage.kind != "pretrain" or read_yaml(stage.config)["method"]["name"] != "pretrain_actionpp":
            continue
        fed = [s for s in wf.stages if getattr(s, "init", None) == f"${{stages.{stage.name}.checkpoint}}"]
        assert fed and stage.labeled is not None
        assert all(s.labeled == stage.labeled for s in fed)


def test_variables_data_and_set_overrides(tmp_path: Path, raw_workflow) -> None:
    wf = build_workflow(
        raw_workflow,
        ["vars.steps=3", "stages.train.set.val.every=5", "set.train.device=cpu", "data=other"],
        source="wf.yaml",
    )
    train = wf.stage("train")
    assert train.steps == 3  # a whole-string reference keeps the variable's type
    assert train.set == {"val.every": 5}
    assert wf.set == {"train.device": "cpu"}
    assert wf.stage("infer").input == [str(Path("other/imagesTr/case.nii.gz").resolve())]
    assert Path(wf.output).is_absolute() and Path(train.config).is_absolute()


def test_flag_values_stay_typed(raw_workflow) -> None:
    """``medcl run --runs 2024``: a flag's value is a ``(key, value)`` pair, never re-read as YAML (an int)."""
    wf = build_workflow(raw_workflow, [("output", "2024"), ("tracking_uri", "yes")], source="wf.yaml")
    assert Path(wf.output).name == "2024" and wf.tracking_uri == "yes"
    with pytest.raises(ConfigError, match="output"):
        build_workflow(raw_workflow, ["output=2024"], source="wf.yaml")  # --set reads YAML: 2024 is a number


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stages.1.stepz": 3}, "stage 'train': unknown key 'stepz'"),
        ({"stages.3.kind": "paint"}, "unknown kind 'paint'"),
        ({"colour": "red"}, "unknown key 'colour'"),
    ],
)
def test_invalid_workflows_name_the_file_and_the_problem(change: dict, message: str, refused) -> None:
    refused(change, message)


def test_set_names_unknown_stage(raw_workflow) -> None:
    with pytest.raises(ConfigError, match="no stage 'nope' .*split, train, evaluate, infer"):
        build_workflow(raw_workflow, ["stages.nope.steps=1"], source="wf.yaml")
