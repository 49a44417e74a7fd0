"""References between the parts of a workflow: ``${vars.NAME}``, ``${data}``, ``${stages.STAGE.KEY}``."""

from __future__ import annotations

import pytest

from medcl.errors import ConfigError
from medcl.workflows.references import references, resolve_stage, substitute, substitute_static
from medcl.workflows.spec import build_workflow


def test_references_and_escapes() -> None:
    value = {"a": "${vars.x} and $${literal} in ${stages.s.k}", "b": [1, "${data}", {"c": "${vars.y}"}]}
    assert references(value) == ["vars.x", "stages.s.k", "data", "vars.y"]
    assert references(3) == [] and references("no reference") == []


def test_a_whole_reference_keeps_its_type_a_partial_one_is_text() -> None:
    def lookup(expr: str):
        return {"vars.n": 3, "vars.f": [64, 64]}[expr]

    value = {"steps": "${vars.n}", "name": "run-${vars.n}-$${vars.n}", "sizes": ["${vars.f}"], "k": 5}
    assert substitute(value, lookup) == {"steps": 3, "name": "run-3-${vars.n}", "sizes": [[64, 64]], "k": 5}
    assert substitute("$${vars.n}", lookup) == "${vars.n}"  # the escape writes a literal ${


def test_static_substitution_and_its_errors() -> None:
    raw = {
        "vars": {"s": 2},
        "data": "/d",
        "stages": [{"steps": "${vars.s}", "x": "${data}/a", "y": "${stages.t.k}"}],
    }
    assert substitute_static(raw, "wf.yaml")["stages"] == [{"steps": 2, "x": "/d/a", "y": "${stages.t.k}"}]
    with pytest.raises(ConfigError, match=r"^wf.yaml: unknown variable \$\{vars.n\} \(vars: s\)$"):
        substitute_static({**raw, "stages": ["${vars.n}"]}, "wf.yaml")
    with pytest.raises(ConfigError, match=r"wf.yaml uses \$\{data\} but sets no data \(add data: DIR"):
        substitute_static({"stages": ["${data}"]}, "wf.yaml")
    with pytest.raises(ConfigError, match=r"^wf.yaml: 'output' cannot use \$\{...\} references$"):
        substitute_static({"vars": {"s": 2}, "output": "runs/${vars.s}"}, "wf.yaml")
    with pytest.raises(ConfigError, match="'vars' must be a mapping"):
        substitute_static({"vars": [1, 2]}, "wf.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stages.1.init": "${stages.nosuch.checkpoint}"}, "unknown stage 'nosuch'"),
        ({"stages.1.init": "${stages.evaluate.summary}"}, "forward reference: stage 'evaluate'"),
        ({"stages.1.init": "${stages.split.model}"}, "no output 'model' \\(outputs: run_id, splits\\)"),
        ({"stages.1.init": "${stages.train.checkpoint}"}, "refers to the stage itself"),
        ({"stages.1.init": "${nonsense}"}, "unknown reference"),
        ({"stages.1.steps": "${vars.nosuch}"}, "unknown variable"),
        ({"register.from": "evaluate"}, "only pretrain/train/finetune"),
        ({"stages.2.name": "split"}, "two stages are named 'split'"),
    ],
)
def test_bad_references_name_the_file_and_the_problem(change: dict, message: str, refused) -> None:
    refused(change, message)


def test_stage_references_are_resolved_when_the_stage_starts(raw_workflow) -> None:
    wf = build_workflow(raw_workflow, source="wf.yaml")
    train = wf.stage("train")
    assert train.splits == "${stages.split.splits}" and train.steps == 7  # vars: substituted on loading
    resolved = resolve_stage(train, {"split": {"splits": "/x/splits.json"}}, "wf.yaml")
    assert resolved.splits == "/x/splits.json"
    with pytest.raises(ConfigError, match=r"\$\{stages.train.model\} is empty.*checkpoint"):
        resolve_stage(wf.stage("evaluate"), {"train": {"model": None}, "split": {"splits": "s"}}, "wf.yaml")
    with pytest.raises(ConfigError, match="after substituting references"):
        resolve_stage(train, {"split": {"splits": ["not", "a", "path"]}}, "wf.yaml")
