"""Shared fixtures of the workflow tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def raw_workflow() -> dict:
    """A fresh raw workflow mapping: split, train, evaluate and infer stages with references between them."""
    raw = {
        "name": "wf",
        "data": "some/data",
        "vars": {"steps": 7},
        "stages": [
            {"name": "split", "kind": "split", "labeled": 2, "val": 1},
            {
                "name": "train",
                "kind": "train",
                "config": "configs/hippocampus/demo.yaml",
                "splits": "${stages.split.splits}",
                "steps": "${vars.steps}",
            },
            {
                "name": "evaluate",
                "kind": "evaluate",
                "model": "${stages.train.model}",
                "splits": "${stages.split.splits}",
                "subset": "val",
            },
            {
                "name": "infer",
                "kind": "infer",
                "model": "${stages.train.checkpoint}",
                "input": "${data}/imagesTr/case.nii.gz",
            },
        ],
        "register": {"name": "m", "from": "train"},
    }
    return raw


@pytest.fixture
def refused(raw_workflow: dict):
    """``refused(change, message)``: the mapping with ``change`` applied (dotted keys, list indices as digits)
    fails to load with a ConfigError matching ``message`` that names the file."""
    from medcl.errors import ConfigError
    from medcl.workflows.spec import build_workflow

    def check(change: dict, message: str) -> None:
        for key, value in change.items():
            node = raw_workflow
            *parents, last = key.split(".")
            for part in parents:
                node = node[int(part)] if part.isdigit() else node[part]
            node[last] = value
        with pytest.raises(ConfigError, match=message) as err:
            build_workflow(raw_workflow, source="workflows/broken.yaml")
        assert "workflows/broken.yaml" in str(err.value)

    return check
